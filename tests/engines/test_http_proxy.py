"""The filtering proxy alone, on loopback (no Docker): what it forwards, what it refuses.

Rules of these tests: every server is on 127.0.0.1; made-up names (`allowed.test`,
`denied.test`) reach them only through the proxy's resolver override, so nothing here can
touch another address. Real sockets, real clients (httpx, or raw bytes where the bytes are
the point); no sleeps except in the test about the idle timeout.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

import h11
import httpx
import pytest
import trio
import trio.testing

from meshnode.engines.http_proxy import DomainRules, HttpFilterProxy, normalize_host

LOOPBACK = "127.0.0.1"
NAMES = {"allowed.test": LOOPBACK, "denied.test": LOOPBACK, "sub.allowed.test": LOOPBACK}
WAIT_S = 5  # an upper bound on any single exchange; the tests take milliseconds


# --- loopback servers --------------------------------------------------------------------


async def origin_server(name: str, stream: trio.SocketStream) -> None:
    """An HTTP server that answers every request with what it received (keep-alive)."""
    connection = h11.Connection(h11.SERVER)
    request: h11.Request | None = None
    body = b""
    async with stream:
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                request, body = event, b""
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                host = dict(request.headers).get(b"host", b"").decode()
                text = f"{name}: {request.method.decode()} {request.target.decode()} host={host}"
                reply = f"{text} body={body.decode()}".encode()
                for data in (
                    connection.send(
                        h11.Response(
                            status_code=200, headers=[(b"content-length", str(len(reply)))]
                        )
                    ),
                    connection.send(h11.Data(data=reply)),
                    connection.send(h11.EndOfMessage()),
                ):
                    await stream.send_all(data or b"")
                if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                    return
                connection.start_next_cycle()
            else:
                return


async def echo_server(stream: trio.SocketStream) -> None:
    """Sends back every byte; closes its side when the client closes its own."""
    async with stream:
        async for data in stream:
            await stream.send_all(b"echo:" + data)


async def start_server(
    nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[None]]
) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host=LOOPBACK))
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def start_proxy(nursery: trio.Nursery, proxy: HttpFilterProxy) -> int:
    port: int = await nursery.start(proxy.serve, LOOPBACK, 0)
    return port


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    import socket

    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
    return port


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Sends `data` to the proxy and reads until it closes the connection."""
    with trio.fail_after(WAIT_S):
        stream = await trio.open_tcp_stream(LOOPBACK, port)
        async with stream:
            await stream.send_all(data)
            received = b""
            async for chunk in stream:
                received += chunk
            return received


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@pytest.fixture
async def servers(nursery: trio.Nursery) -> dict[str, int]:
    return {
        "allowed": await start_server(nursery, partial(origin_server, "allowed")),
        "denied": await start_server(nursery, partial(origin_server, "denied")),
        "echo": await start_server(nursery, echo_server),
    }


@pytest.fixture
async def proxy_port(nursery: trio.Nursery) -> int:
    proxy = HttpFilterProxy(resolve=NAMES.get)
    proxy.register_client(LOOPBACK, ["allowed.test"], owner="execution-1")
    return await start_proxy(nursery, proxy)


def client_through(proxy_port: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        proxy=f"http://{LOOPBACK}:{proxy_port}", trust_env=False, timeout=WAIT_S
    )


# --- forwarding --------------------------------------------------------------------------


async def test_allowed_get_is_forwarded_with_its_body(
    servers: dict[str, int], proxy_port: int
) -> None:
    async with client_through(proxy_port) as client:
        response = await client.get(f"http://allowed.test:{servers['allowed']}/path?q=1")
    assert response.status_code == 200
    assert response.text == (f"allowed: GET /path?q=1 host=allowed.test:{servers['allowed']} body=")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_request_bodies_are_forwarded(
    servers: dict[str, int], proxy_port: int, chunked: bool
) -> None:
    async def parts() -> AsyncIterator[bytes]:
        yield b"part one, "
        yield b"part two"

    content = parts() if chunked else b"part one, part two"
    async with client_through(proxy_port) as client:
        response = await client.post(
            f"http://allowed.test:{servers['allowed']}/upload",
            content=content,
        )
    assert response.status_code == 200
    port = servers["allowed"]
    assert response.text.endswith(f"POST /upload host=allowed.test:{port} body=part one, part two")


async def test_one_client_connection_carries_several_requests(
    servers: dict[str, int], proxy_port: int
) -> None:
    with trio.fail_after(WAIT_S):
        stream = await trio.open_tcp_stream(LOOPBACK, proxy_port)
        connection = h11.Connection(h11.CLIENT)
        texts = []
        async with stream:
            for path in ("/first", "/second"):
                target = f"http://allowed.test:{servers['allowed']}{path}"
                request = h11.Request(method="GET", target=target, headers=[("host", "x")])
                await stream.send_all(connection.send(request) or b"")
                await stream.send_all(connection.send(h11.EndOfMessage()) or b"")
                body = b""
                while True:
                    event = connection.next_event()
                    if event is h11.NEED_DATA:
                        connection.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                texts.append(body.decode())
                connection.start_next_cycle()
    port = servers["allowed"]
    # The Host header the client sent ("x") is replaced by the target's authority.
    assert texts == [
        f"allowed: GET /first host=allowed.test:{port} body=",
        f"allowed: GET /second host=allowed.test:{port} body=",
    ]


# --- refusals ----------------------------------------------------------------------------


async def test_denied_host_gets_403_naming_the_host(
    servers: dict[str, int], proxy_port: int
) -> None:
    async with client_through(proxy_port) as client:
        response = await client.get(f"http://denied.test:{servers['denied']}/")
    assert response.status_code == 403
    assert response.text == (
        'host "denied.test" is not in the job\'s allowed domains (Network.Domains: allowed.test)\n'
    )


async def test_unregistered_client_gets_403(nursery: trio.Nursery, servers: dict[str, int]) -> None:
    port = await start_proxy(nursery, HttpFilterProxy(resolve=NAMES.get))
    async with client_through(port) as client:
        response = await client.get(f"http://allowed.test:{servers['allowed']}/")
    assert response.status_code == 403
    assert "127.0.0.1 is not an execution with HTTP networking" in response.text


async def test_unregistering_takes_effect_and_needs_the_owner(
    nursery: trio.Nursery, servers: dict[str, int]
) -> None:
    proxy = HttpFilterProxy(resolve=NAMES.get)
    port = await start_proxy(nursery, proxy)
    proxy.register_client(LOOPBACK, ["allowed.test"], owner="old")
    proxy.register_client(LOOPBACK, ["allowed.test"], owner="new")  # the address was reused
    assert proxy.unregister_client(LOOPBACK, owner="old") is False
    assert proxy.registered_clients() == {LOOPBACK: "new"}
    url = f"http://allowed.test:{servers['allowed']}/"
    async with client_through(port) as client:
        assert (await client.get(url)).status_code == 200
        assert proxy.unregister_client(LOOPBACK, owner="new") is True
        assert (await client.get(url)).status_code == 403


@pytest.mark.parametrize(
    ("rule", "host", "allowed"),
    [
        ("example.com", "example.com", True),
        ("example.com", "EXAMPLE.com.", True),
        ("Example.COM", "example.com", True),
        ("example.com", "www.example.com", False),
        ("example.com", "badexample.com", False),
        (".example.com", "example.com", True),
        (".example.com", "www.example.com", True),
        (".example.com", "a.b.example.com", True),
        (".example.com", "badexample.com", False),
        (".example.com", "example.com.evil.org", False),
        ("*.example.com", "www.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "badexample.com", False),
        ("10.0.0.1", "10.0.0.1", True),
        ("10.0.0.1", "10.0.0.2", False),
        (".0.0.1", "10.0.0.1", False),  # wildcards never match IP addresses
        ("::1", "0:0:0:0:0:0:0:1", True),
        ("example.com.", "example.com", True),
    ],
)
def test_domain_rules(rule: str, host: str, allowed: bool) -> None:
    assert DomainRules.parse([rule]).allows(normalize_host(host)) is allowed


async def test_wildcard_rule_through_the_proxy(
    nursery: trio.Nursery, servers: dict[str, int]
) -> None:
    proxy = HttpFilterProxy(resolve=NAMES.get)
    proxy.register_client(LOOPBACK, ["*.allowed.test"], owner="execution-1")
    port = await start_proxy(nursery, proxy)
    async with client_through(port) as client:
        sub = await client.get(f"http://sub.allowed.test:{servers['allowed']}/")
        apex = await client.get(f"http://allowed.test:{servers['allowed']}/")
    assert (sub.status_code, apex.status_code) == (200, 403)


# --- CONNECT -----------------------------------------------------------------------------


async def test_connect_tunnels_bytes_both_ways(servers: dict[str, int], proxy_port: int) -> None:
    with trio.fail_after(WAIT_S):
        stream = await trio.open_tcp_stream(LOOPBACK, proxy_port)
        async with stream:
            target = f"allowed.test:{servers['echo']}"
            # The first tunnel bytes ride with the CONNECT head, as eager clients send them.
            await stream.send_all(
                f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\nearly".encode()
            )
            received = b""
            while b"echo:early" not in received:
                received += await stream.receive_some(65536)
            assert received.startswith(b"HTTP/1.1 200 ")
            await stream.send_all(b"ping")
            assert await stream.receive_some(65536) == b"echo:ping"
            # Half-close travels through: the echo server ends, and so does the tunnel.
            await stream.send_eof()
            assert await stream.receive_some(65536) == b""


async def test_connect_to_a_denied_host_gets_403(servers: dict[str, int], proxy_port: int) -> None:
    target = f"denied.test:{servers['echo']}"
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"
    response = await raw_exchange(proxy_port, head.encode())
    assert status_of(response) == 403
    assert b'host "denied.test" is not in the job\'s allowed domains' in response


# --- bad requests and bad upstreams; the proxy goes on -----------------------------------


HUGE_HEAD = b"GET http://allowed.test/ HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 20000 + b"\r\n\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "status", "says"),
    [
        pytest.param(b"this is not http\r\n\r\n", 400, b"", id="garbage"),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
            400,
            b"is not a proxy request",
            id="origin-form",
        ),
        pytest.param(
            b"GET https://allowed.test/ HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            b"use CONNECT",
            id="https-uri",
        ),
        pytest.param(
            b"CONNECT allowed.test HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            b"CONNECT needs host:port",
            id="connect-without-port",
        ),
        pytest.param(
            b"GET http://bad_host!/ HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            b"not a host name",
            id="bad-host",
        ),
        pytest.param(
            b"GET http://allowed.test:99999/ HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            b"malformed port",
            id="bad-port",
        ),
        pytest.param(HUGE_HEAD, 431, b"too large", id="huge-head"),
    ],
)
async def test_bad_requests_get_4xx_and_the_proxy_keeps_serving(
    servers: dict[str, int], proxy_port: int, request_bytes: bytes, status: int, says: bytes
) -> None:
    response = await raw_exchange(proxy_port, request_bytes)
    assert status_of(response) == status
    assert says in response
    async with client_through(proxy_port) as client:
        after = await client.get(f"http://allowed.test:{servers['allowed']}/")
    assert after.status_code == 200


async def test_upstream_down_or_unresolvable_is_502(
    nursery: trio.Nursery, servers: dict[str, int]
) -> None:
    down = closed_port()
    names = {**NAMES, "down.test": LOOPBACK}
    proxy = HttpFilterProxy(resolve=names.get)
    proxy.register_client(LOOPBACK, ["allowed.test", "down.test", "nowhere.test"], owner="e")
    port = await start_proxy(nursery, proxy)
    async with client_through(port) as client:
        refused = await client.get(f"http://down.test:{down}/")
        unknown = await client.get("http://nowhere.test/")
        after = await client.get(f"http://allowed.test:{servers['allowed']}/")
    assert refused.status_code == 502
    assert f'cannot connect to "down.test:{down}"' in refused.text
    assert unknown.status_code == 502
    assert 'cannot resolve host "nowhere.test"' in unknown.text
    assert after.status_code == 200
    head = f"CONNECT down.test:{down} HTTP/1.1\r\nHost: x\r\n\r\n"
    connect = await raw_exchange(port, head.encode())
    assert status_of(connect) == 502


async def test_connections_beyond_the_limit_get_503(
    nursery: trio.Nursery, servers: dict[str, int]
) -> None:
    proxy = HttpFilterProxy(resolve=NAMES.get, max_connections=1)
    proxy.register_client(LOOPBACK, ["allowed.test"], owner="e")
    port = await start_proxy(nursery, proxy)
    with trio.fail_after(WAIT_S):
        holder = await trio.open_tcp_stream(LOOPBACK, port)
        async with holder:
            # An open tunnel holds the one connection; its echo proves the proxy counts it.
            target = f"allowed.test:{servers['echo']}"
            await holder.send_all(f"CONNECT {target} HTTP/1.1\r\nHost: x\r\n\r\nhold".encode())
            received = b""
            while b"echo:hold" not in received:
                received += await holder.receive_some(65536)
            response = await raw_exchange(port, b"GET http://allowed.test/ HTTP/1.1\r\n\r\n")
            assert status_of(response) == 503
            assert b"too many connections" in response
            await holder.send_eof()
            assert await holder.receive_some(65536) == b""
        await trio.testing.wait_all_tasks_blocked()  # the proxy's handler finishes its cleanup
    assert proxy.open_connections == 0
    async with client_through(port) as client:
        assert (await client.get(f"http://allowed.test:{servers['allowed']}/")).status_code == 200


async def test_idle_clients_are_disconnected(nursery: trio.Nursery) -> None:
    idle_timeout_s = 0.2
    proxy = HttpFilterProxy(resolve=NAMES.get, idle_timeout_s=idle_timeout_s)
    port = await start_proxy(nursery, proxy)
    started = trio.current_time()
    with trio.fail_after(WAIT_S):
        stream = await trio.open_tcp_stream(LOOPBACK, port)
        async with stream:
            assert await stream.receive_some(100) == b""  # closed by the proxy, no answer
    assert idle_timeout_s <= trio.current_time() - started < idle_timeout_s + 1
