"""The node's filtering HTTP proxy: the only way out for jobs with `Network.Type: HTTP`.

Why it is hand-written: no maintained forward proxy exists for trio (or anyio), and the
stand-alone ones (Squid, tinyproxy) would be one more daemon to install, configure and
supervise on every edge device. A forward proxy is small on top of h11, which already
parses HTTP/1.1 for httpx.

Rules of this module:
- Every decision is about two things: the *client* (which execution asks, known by its
  source address, registered by the engine before the execution starts) and the *host* it
  asks for. A client with no registration is refused, and so is a host that matches none of
  the client's domains: `403 Forbidden`, with a body naming the host.
- The host that is checked is the host that is connected to: the target is normalized once
  (lower case, no trailing dot, canonical IP form) and that same string is resolved. The
  `Host` header is never trusted; it is rewritten from the request target.
- Domain rules follow Squid's `dstdomain` (Bacalhau's HTTP networking is Squid underneath):
  `example.com` is that name only; `.example.com` is example.com and every subdomain;
  `*.example.com` is every subdomain but not example.com itself; an IP address matches
  itself only (wildcards never match IP addresses). Case does not matter, a trailing dot
  is ignored.
- What is spoken: plain HTTP in absolute form (`GET http://host/path`), forwarded with h11
  on both sides (client keep-alive; one upstream connection per request), and `CONNECT
  host:port`, after which the connection is a blind byte tunnel (TLS stays end to end).
  Anything else (origin-form requests, `https://` targets, which would need the proxy to
  originate TLS) is a `400`. Unreachable upstreams are `502`, slow ones `504`.
- Everything is bounded: request and response head size, concurrent client connections,
  idle time on every read and write, connect time.
- A client can never stop the proxy: whatever goes wrong on one connection ends that
  connection only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, cast

import h11
import trio

__all__ = ["DomainRules", "HttpFilterProxy", "Resolver", "normalize_host"]

LOGGER: Final = logging.getLogger(__name__)

# host -> address to connect to, or (address, port) to also replace the port, or None when
# the name does not resolve. Tests use it to map made-up names to loopback servers.
Resolver = Callable[[str], "str | tuple[str, int] | None"]

_RECEIVE_BYTES: Final = 64 * 1024
# After an error response: how long and how much to read before closing (see _send_error).
_DRAIN_AFTER_ERROR_S: Final = 1.0
_DRAIN_AFTER_ERROR_BYTES: Final = 256 * 1024
_HOST_LABEL_RE: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# Headers that belong to one connection, not to the request (RFC 9110 §7.6.1), plus the
# ones this proxy handles itself: Expect (it answers 100-continue), Host (rewritten).
_HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"host",
    }
)
_REASONS: Final = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def normalize_host(text: str) -> str:
    """The canonical spelling of a host name or IP address; ValueError if it is neither."""
    host = text.strip().lower().removesuffix(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not 0 < len(host) <= 253 or not all(_HOST_LABEL_RE.fullmatch(p) for p in host.split(".")):
        raise ValueError(f"{text!r} is not a host name or IP address")
    return host


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class DomainRules:
    """A job's allowed domains, parsed once (see the module rules for their meaning)."""

    names: frozenset[str]  # exact names and IP addresses
    domains_and_subdomains: tuple[str, ...]  # from `.example.com`
    subdomains_only: tuple[str, ...]  # from `*.example.com`

    @classmethod
    def parse(cls, domains: Iterable[str]) -> DomainRules:
        names: set[str] = set()
        with_apex: list[str] = []
        subdomains: list[str] = []
        for rule in domains:
            text = rule.strip()
            if text.startswith("*."):
                subdomains.append(normalize_host(text[2:]))
            elif text.startswith("."):
                with_apex.append(normalize_host(text[1:]))
            else:
                names.add(normalize_host(text))
        return cls(frozenset(names), tuple(with_apex), tuple(subdomains))

    def allows(self, host: str) -> bool:
        """`host` must already be normalized (`normalize_host`)."""
        if host in self.names:
            return True
        if _is_ip_address(host):
            return False
        if any(host == base or host.endswith("." + base) for base in self.domains_and_subdomains):
            return True
        return any(host.endswith("." + base) for base in self.subdomains_only)

    def describe(self) -> str:
        rules = [
            *sorted(self.names),
            *("." + base for base in self.domains_and_subdomains),
            *("*." + base for base in self.subdomains_only),
        ]
        return ", ".join(rules)


@dataclass(frozen=True, slots=True)
class _Registration:
    owner: str
    rules: DomainRules


class _RefusalError(Exception):
    """Ends a client connection with an error response (status and a one-line reason)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HttpFilterProxy:
    """One proxy for the whole node; each client address gets its own allowed domains.

    Run it with `await nursery.start(proxy.serve, host, port)` (it reports the bound port).
    """

    def __init__(
        self,
        *,
        resolve: Resolver | None = None,
        max_connections: int = 256,
        max_header_bytes: int = 16 * 1024,
        idle_timeout_s: float = 60.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self._resolve = resolve
        self._max_connections = max_connections
        self._max_header_bytes = max_header_bytes
        self._idle_timeout_s = idle_timeout_s
        self._connect_timeout_s = connect_timeout_s
        # Bounded by the executions the node runs at once: the engine registers an address
        # before an execution starts and unregisters it after its container is gone.
        self._clients: dict[str, _Registration] = {}
        self.open_connections = 0

    # --- registrations -------------------------------------------------------------------

    def register_client(self, address: str, domains: Iterable[str], *, owner: str) -> None:
        """Let the client at `address` reach `domains`; `owner` (an execution id) is what
        `unregister_client` must name, so a late unregister never drops a newer owner's
        registration of a reused address."""
        self._clients[_canonical_address(address)] = _Registration(
            owner, DomainRules.parse(domains)
        )

    def unregister_client(self, address: str, *, owner: str) -> bool:
        key = _canonical_address(address)
        registration = self._clients.get(key)
        if registration is None or registration.owner != owner:
            return False
        del self._clients[key]
        return True

    def registered_clients(self) -> dict[str, str]:
        """address -> owner, for diagnostics and tests."""
        return {address: r.owner for address, r in self._clients.items()}

    # --- serving -------------------------------------------------------------------------

    async def serve(
        self,
        listen_host: str,
        listen_port: int,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept clients until cancelled; reports the bound port through `task_status`."""
        listeners = await trio.open_tcp_listeners(listen_port, host=listen_host)
        port: int = listeners[0].socket.getsockname()[1]
        LOGGER.info("http proxy: listening on %s:%d", listen_host, port)
        task_status.started(port)
        await trio.serve_listeners(self._handle_connection, listeners)

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        client = "a client that left"
        try:
            client = _canonical_address(stream.socket.getpeername()[0])
            if self.open_connections >= self._max_connections:
                await self._send_error(
                    stream, _RefusalError(503, "too many connections to the proxy")
                )
                return
            self.open_connections += 1
            try:
                await self._serve_client(stream, client)
            finally:
                self.open_connections -= 1
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError):
            # The client or the upstream went away or stalled: nothing to tell anyone.
            LOGGER.debug("http proxy: connection from %s ended early", client, exc_info=True)
        except Exception:
            # A bug in this module: say so loudly, but one connection must not stop the
            # proxy (and with it every job's network).
            LOGGER.exception("http proxy: unexpected error serving %s", client)
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve_client(self, stream: trio.SocketStream, client: str) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_header_bytes)
        while True:
            try:
                event = await self._receive_event(connection, stream)
                if event is None or isinstance(event, h11.ConnectionClosed):
                    return
                if not isinstance(event, h11.Request):
                    raise _RefusalError(400, f"expected a request, got {type(event).__name__}")
                # h11 bounds only a head still incomplete; one that arrives whole in a single
                # read is measured here, so the limit holds however the bytes are split.
                if _head_bytes(event) > self._max_header_bytes:
                    raise _RefusalError(431, "the request head is too large")
                keep_alive = await self._serve_request(connection, stream, client, event)
            except h11.RemoteProtocolError as error:
                await self._send_error(stream, _RefusalError(error.error_status_hint, f"{error}"))
                return
            except _RefusalError as refusal:
                await self._send_error(stream, refusal)
                return
            if not keep_alive or connection.our_state is not h11.DONE:
                return
            if connection.their_state is not h11.DONE:
                return
            connection.start_next_cycle()

    async def _serve_request(
        self,
        connection: h11.Connection,
        stream: trio.SocketStream,
        client: str,
        request: h11.Request,
    ) -> bool:
        """Serves one request; returns whether the client connection may carry another."""
        method = request.method.upper()
        target = request.target.decode("ascii", "replace")
        if method == b"CONNECT":
            host, port = _parse_authority(target, default_port=None)
            path = ""
        else:
            host, port, path = _parse_absolute_uri(target)
        self._check_allowed(client, host)
        upstream = await self._open_upstream(host, port)
        async with upstream:
            if method == b"CONNECT":
                await self._tunnel(connection, stream, upstream)
                return False
            return await self._forward(connection, stream, upstream, request, host, port, path)

    def _check_allowed(self, client: str, host: str) -> None:
        registration = self._clients.get(client)
        if registration is None:
            LOGGER.debug("http proxy: %s is not a registered client (asked for %s)", client, host)
            raise _RefusalError(
                403,
                f"{client} is not an execution with HTTP networking on this node, "
                f'so it may not reach host "{host}"',
            )
        if not registration.rules.allows(host):
            LOGGER.debug("http proxy: %s (%s) refused %s", client, registration.owner, host)
            raise _RefusalError(
                403,
                f'host "{host}" is not in the job\'s allowed domains '
                f"(Network.Domains: {registration.rules.describe()})",
            )

    async def _open_upstream(self, host: str, port: int) -> trio.SocketStream:
        address: str = host
        if self._resolve is not None:
            resolved = self._resolve(host)
            if resolved is None:
                raise _RefusalError(502, f'cannot resolve host "{host}"')
            if isinstance(resolved, tuple):
                address, port = resolved
            else:
                address = resolved
        with trio.move_on_after(self._connect_timeout_s):
            try:
                return await trio.open_tcp_stream(address, port)
            except OSError as error:
                raise _RefusalError(
                    502, f'cannot connect to "{host}:{port}": {error.strerror or error}'
                ) from error
        raise _RefusalError(504, f'connecting to "{host}:{port}" timed out')

    async def _tunnel(
        self, connection: h11.Connection, stream: trio.SocketStream, upstream: trio.SocketStream
    ) -> None:
        # Read past the CONNECT head (an empty body) so that what remains in h11's buffer is
        # the first bytes of the tunnel, sent by an eager client before our 200.
        while True:
            event = await self._receive_event(connection, stream)
            if event is None:
                return
            if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed) or event is h11.PAUSED:
                break
        await self._send_all(stream, b"HTTP/1.1 200 Connection established\r\n\r\n")
        early_bytes, _ = connection.trailing_data
        if early_bytes:
            await self._send_all(upstream, early_bytes)
        # One idle deadline for both directions: a tunnel that carries bytes either way is
        # alive (a download with nothing sent back is not idle).
        with trio.CancelScope(deadline=trio.current_time() + self._idle_timeout_s) as idle:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, stream, upstream, idle)
                nursery.start_soon(self._pump, upstream, stream, idle)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, idle: trio.CancelScope
    ) -> None:
        while True:
            data = await source.receive_some(_RECEIVE_BYTES)
            if not data:
                # Half-close: pass the end on and let the other direction finish.
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await sink.send_eof()
                return
            idle.deadline = trio.current_time() + self._idle_timeout_s
            await sink.send_all(data)

    async def _forward(
        self,
        connection: h11.Connection,
        stream: trio.SocketStream,
        upstream: trio.SocketStream,
        request: h11.Request,
        host: str,
        port: int,
        path: str,
    ) -> bool:
        authority = _authority(host, port, default_port=80)
        upstream_connection = h11.Connection(
            h11.CLIENT, max_incomplete_event_size=self._max_header_bytes
        )
        headers = [
            (b"host", authority.encode("ascii")),
            *_end_to_end_headers(request.headers),
            # One upstream connection per request: nothing to pool, nothing to go stale.
            (b"connection", b"close"),
        ]
        if any(name.lower() == b"transfer-encoding" for name, _ in request.headers):
            # h11 accepts only chunked; without the header it would send no body at all.
            headers.append((b"transfer-encoding", b"chunked"))
        await self._send_event(
            upstream,
            upstream_connection,
            h11.Request(method=request.method, target=path.encode("ascii"), headers=headers),
        )
        if connection.client_is_waiting_for_100_continue:
            await self._send_event(
                stream, connection, h11.InformationalResponse(status_code=100, headers=[])
            )
        # The request body, as it comes.
        while True:
            event = await self._receive_event(connection, stream)
            if event is None:
                raise _RefusalError(408, "the request body stalled")
            if isinstance(event, h11.Data):
                await self._send_event(upstream, upstream_connection, h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                await self._send_event(upstream, upstream_connection, h11.EndOfMessage())
                break
            else:
                raise _RefusalError(400, "the request body ended early")
        # The response head: until it is sent, a failure can still be reported to the client.
        while True:
            try:
                event = await self._receive_event(upstream_connection, upstream)
            except h11.RemoteProtocolError as error:
                raise _RefusalError(
                    502, f'"{authority}" sent a malformed response: {error}'
                ) from error
            if event is None:
                raise _RefusalError(504, f'"{authority}" did not answer in time')
            if isinstance(event, h11.ConnectionClosed):
                raise _RefusalError(502, f'"{authority}" closed the connection without answering')
            if isinstance(event, h11.InformationalResponse):
                if event.status_code != 101:
                    await self._send_event(stream, connection, event)
                continue
            assert isinstance(event, h11.Response), event
            response_headers = list(_end_to_end_headers(event.headers))
            await self._send_event(
                stream,
                connection,
                h11.Response(
                    status_code=event.status_code, headers=response_headers, reason=event.reason
                ),
            )
            break
        # The response body. A failure now can only cut the client connection.
        while True:
            try:
                event = await self._receive_event(upstream_connection, upstream)
            except h11.RemoteProtocolError as error:
                raise trio.BrokenResourceError(f"{authority} sent a malformed body") from error
            if event is None or isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError(f"{authority} stopped sending its response")
            if isinstance(event, h11.Data):
                await self._send_event(stream, connection, h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                await self._send_event(stream, connection, h11.EndOfMessage())
                return True

    # --- I/O with a deadline on every step -----------------------------------------------

    async def _receive_event(
        self, connection: h11.Connection, stream: trio.SocketStream
    ) -> h11.Event | type[h11.PAUSED] | None:
        """The next h11 event, or None if the peer sent nothing for the idle timeout."""
        while True:
            event = connection.next_event()
            if event is not h11.NEED_DATA:
                return cast("h11.Event | type[h11.PAUSED]", event)
            data = b""
            with trio.move_on_after(self._idle_timeout_s) as idle:
                data = await stream.receive_some(_RECEIVE_BYTES)
            if idle.cancelled_caught:
                return None
            connection.receive_data(data)

    async def _send_event(
        self, stream: trio.SocketStream, connection: h11.Connection, event: h11.Event
    ) -> None:
        data = connection.send(event)
        if data:
            await self._send_all(stream, data)

    async def _send_all(self, stream: trio.SocketStream, data: bytes) -> None:
        with trio.fail_after(self._idle_timeout_s):
            await stream.send_all(data)

    async def _send_error(self, stream: trio.SocketStream, refusal: _RefusalError) -> None:
        # Written by hand rather than through h11: the request may be unparseable, and the
        # connection is closed right after, so there is no state to keep in step.
        body = (refusal.message + "\n").encode("utf-8", "replace")
        reason = _REASONS.get(refusal.status, "Error")
        head = (
            f"HTTP/1.1 {refusal.status} {reason}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n"
            "Proxy-Agent: meshnode\r\n\r\n"
        )
        await self._send_all(stream, head.encode("ascii") + body)
        # Closing with unread bytes pending makes the kernel send a reset, which can destroy
        # the response before the client reads it: say we are done, then drain (bounded).
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await stream.send_eof()
            with trio.move_on_after(_DRAIN_AFTER_ERROR_S):
                drained = 0
                while drained < _DRAIN_AFTER_ERROR_BYTES:
                    data = await stream.receive_some(_RECEIVE_BYTES)
                    if not data:
                        break
                    drained += len(data)


def _canonical_address(address: str) -> str:
    """IPv4 clients of a dual-stack listener show up as ::ffff:a.b.c.d; register as a.b.c.d."""
    parsed = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(parsed)


def _parse_authority(text: str, *, default_port: int | None) -> tuple[str, int]:
    """`host[:port]` (IPv6 in brackets) -> (normalized host, port); 400 if malformed."""
    authority = text.rpartition("@")[2]  # userinfo is never used to decide anything
    if authority.startswith("["):
        host_text, bracket, rest = authority[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise _RefusalError(400, f"malformed host in {text!r}")
        port_text = rest[1:] if rest else ""
    elif authority.count(":") == 1:
        host_text, _, port_text = authority.partition(":")
    else:
        host_text, port_text = authority, ""
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise _RefusalError(400, f"malformed port in {text!r}")
        port = int(port_text)
    elif default_port is None:
        raise _RefusalError(400, f"CONNECT needs host:port, got {text!r}")
    else:
        port = default_port
    try:
        return normalize_host(host_text), port
    except ValueError as error:
        raise _RefusalError(400, str(error)) from error


def _parse_absolute_uri(target: str) -> tuple[str, int, str]:
    """`http://host[:port]/path?query` -> (host, port, origin-form path)."""
    scheme, separator, rest = target.partition("://")
    if not separator:
        raise _RefusalError(
            400,
            f"{target!r} is not a proxy request: send an absolute URI (http://host/...) "
            "or CONNECT host:port",
        )
    if scheme.lower() != "http":
        raise _RefusalError(
            400, f"{scheme}:// is not forwarded: use CONNECT for https (HTTPS_PROXY does it)"
        )
    slash = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:slash], rest[slash:]
    if not path.startswith("/"):
        path = "/" + path
    path = path.split("#", 1)[0]
    host, port = _parse_authority(authority, default_port=80)
    return host, port, path


def _head_bytes(request: h11.Request) -> int:
    """The size of the request head as it was on the wire (give or take whitespace)."""
    line = len(request.method) + len(request.target) + len(b"  HTTP/1.1\r\n")
    return line + sum(len(name) + len(value) + 4 for name, value in request.headers) + 2


def _authority(host: str, port: int, *, default_port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port == default_port else f"{shown}:{port}"


def _end_to_end_headers(headers: Iterable[tuple[bytes, bytes]]) -> Iterable[tuple[bytes, bytes]]:
    """Drops hop-by-hop headers, including those the Connection header names. Framing
    (Content-Length, chunked) is redone by h11 on the other side."""
    pairs = list(headers)
    named = {
        token.strip().lower()
        for name, value in pairs
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    return [(n, v) for n, v in pairs if n.lower() not in _HOP_BY_HOP and n.lower() not in named]
