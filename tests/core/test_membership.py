"""SWIM membership, events in and messages out, over a tiny hand-driven network (no sleeps)."""

from __future__ import annotations

import random

from msgspec.structs import replace

from meshnode.core.commands import Publish, Send
from meshnode.core.election import rank, replica_set
from meshnode.core.membership import Membership, MembershipParams, MemberState
from meshnode.core.messages import (
    Ack,
    Alive,
    Announce,
    Approval,
    Dead,
    MemberInfo,
    Ping,
    PingReq,
    PushPull,
    Refresh,
    Suspect,
)
from meshnode.core.records import NodeInfo
from meshnode.core.resources import ResourceAmounts

PARAMS = MembershipParams(probe_interval_s=1.0, probe_timeout_s=0.4, min_suspicion_s=3.0)


def info(node_id: str) -> MemberInfo:
    return MemberInfo(node=NodeInfo(id=node_id), addrs=(f"/ip4/127.0.0.1/tcp/1/p2p/{node_id}",))


class Net:
    """Delivers Sends between memberships at chosen instants; `down` nodes drop everything."""

    def __init__(self, *ids: str) -> None:
        self.nodes = {
            i: Membership(i, info(i), rng=random.Random(n), now=0.0, params=PARAMS)
            for n, i in enumerate(ids)
        }
        self.down: set[str] = set()
        self.sent: list[tuple[str, Send | Publish]] = []
        self.changes: list[tuple[str, str, str]] = []

    def pump(self, now: float) -> None:
        """Deliver until quiet (zero latency)."""
        for _ in range(1000):
            moved = False
            for node_id, node in self.nodes.items():
                commands, changes = node.take_outputs()
                self.changes.extend((node_id, c.node_id, c.kind) for c in changes)
                for command in commands:
                    self.sent.append((node_id, command))
                    moved = True
                    if node_id in self.down:
                        continue
                    if isinstance(command, Send):
                        target = self.nodes.get(command.to)
                        if target is not None and command.to not in self.down:
                            target.on_message(node_id, command.message, now)
                    else:
                        for other_id, other in self.nodes.items():
                            if other_id != node_id and other_id not in self.down:
                                other.on_message(node_id, command.message, now)
            if not moved:
                return
        raise AssertionError("the network did not go quiet")

    def run(self, until: float, step: float = 0.1) -> None:
        now = 0.0
        while now <= until + 1e-9:
            for node_id, node in self.nodes.items():
                if node_id not in self.down:
                    node.tick(now)
            self.pump(now)
            now = round(now + step, 6)

    def join_all(self) -> None:
        first = next(iter(self.nodes))
        for node_id, node in self.nodes.items():
            if node_id != first:
                node.add_seed(first, (), 0.0)
        self.pump(0.0)

    def state(self, viewer: str, of: str) -> MemberState | None:
        member = self.nodes[viewer].member(of)
        return member.state if member else None


def test_a_node_joins_through_a_seed_and_everyone_learns_of_everyone() -> None:
    net = Net("a", "b", "c", "d")
    net.join_all()
    net.run(until=5.0)
    for viewer in net.nodes:
        assert net.nodes[viewer].reachable_ids() == ["a", "b", "c", "d"]
    assert ("b", "a", "joined") in net.changes


def test_a_joining_node_gossips_its_own_alive_once_per_interval() -> None:
    node = Membership("a", info("a"), rng=random.Random(1), now=0.0, params=PARAMS)
    node.tick(0.0)
    commands, _ = node.take_outputs()
    published = [c for c in commands if isinstance(c, Publish)]
    assert len(published) == 1
    assert isinstance(published[0].message, Announce)
    assert published[0].message.updates[0] == Alive(node_id="a", incarnation=0, info=info("a"))
    node.tick(0.5)
    assert not [c for c in node.take_outputs()[0] if isinstance(c, Publish)]


def test_each_period_probes_exactly_one_member() -> None:
    net = Net("a", "b", "c")
    net.join_all()
    net.nodes["a"].tick(10.0)
    commands, _ = net.nodes["a"].take_outputs()
    pings = [c for c in commands if isinstance(c, Send) and isinstance(c.message, Ping)]
    assert len(pings) == 1
    assert pings[0].to in ("b", "c")


def test_a_silent_member_is_probed_indirectly_then_suspected_then_declared_dead() -> None:
    net = Net("a", "b", "c")
    net.join_all()
    net.run(until=2.0)
    net.down.add("c")
    net.sent.clear()
    net.run(until=15.0)
    indirect = [c for _, c in net.sent if isinstance(c, Send) and isinstance(c.message, PingReq)]
    assert indirect, "no indirect probe was asked"
    assert all(c.message.target == "c" for c in indirect)  # type: ignore[union-attr]
    assert net.state("a", "c") is MemberState.DEAD
    assert net.state("b", "c") is MemberState.DEAD
    kinds = [kind for viewer, of, kind in net.changes if viewer == "a" and of == "c"]
    assert kinds.index("suspect") < kinds.index("dead")


def test_an_indirect_ack_saves_a_member_that_only_the_prober_cannot_reach() -> None:
    a = Membership("a", info("a"), rng=random.Random(1), now=0.0, params=PARAMS)
    a.on_message("b", PushPull(updates=(Alive(node_id="b", incarnation=0, info=info("b")),)), 0.0)
    a.on_message("c", PushPull(updates=(Alive(node_id="c", incarnation=0, info=info("c")),)), 0.0)
    a.take_outputs()
    a.tick(1.0)
    (ping,) = [c for c in a.take_outputs()[0] if isinstance(c.message, Ping)]  # type: ignore[union-attr]
    assert isinstance(ping, Send)
    target = ping.to
    helper = "c" if target == "b" else "b"
    a.tick(1.5)  # past the probe timeout: ask the other one
    requests = [c for c in a.take_outputs()[0] if isinstance(c, Send)]
    assert [r.to for r in requests if isinstance(r.message, PingReq)] == [helper]
    assert isinstance(ping.message, Ping)
    a.on_message(helper, Ack(seq=ping.message.seq), 1.6)  # the helper relays the target's ack
    a.tick(2.0)
    a.take_outputs()
    assert a.member(target).state is MemberState.ALIVE  # type: ignore[union-attr]


def test_a_suspect_refutes_with_a_higher_incarnation() -> None:
    a = Membership("a", info("a"), rng=random.Random(1), now=0.0, params=PARAMS)
    a.take_outputs()
    a.on_message("b", Ping(seq=1, updates=(Suspect(node_id="a", incarnation=0, by="b"),)), 1.0)
    assert a.incarnation == 1
    commands, _ = a.take_outputs()
    (ack,) = [c for c in commands if isinstance(c, Send)]
    assert isinstance(ack.message, Ack)
    assert Alive(node_id="a", incarnation=1, info=info("a")) in ack.message.updates


def test_an_old_suspicion_does_not_beat_a_newer_alive() -> None:
    a = Membership("a", info("a"), rng=random.Random(1), now=0.0, params=PARAMS)
    a.on_message("x", PushPull(updates=(Alive(node_id="b", incarnation=5, info=info("b")),)), 0.0)
    a.on_message("x", Announce(updates=(Suspect(node_id="b", incarnation=4, by="x"),)), 0.1)
    assert a.member("b").state is MemberState.ALIVE  # type: ignore[union-attr]
    a.on_message("x", Announce(updates=(Suspect(node_id="b", incarnation=5, by="x"),)), 0.2)
    assert a.member("b").state is MemberState.SUSPECT  # type: ignore[union-attr]
    a.on_message("x", Announce(updates=(Alive(node_id="b", incarnation=5, info=info("b")),)), 0.3)
    assert a.member("b").state is MemberState.SUSPECT  # type: ignore[union-attr]
    a.on_message("x", Announce(updates=(Alive(node_id="b", incarnation=6, info=info("b")),)), 0.4)
    assert a.member("b").state is MemberState.ALIVE  # type: ignore[union-attr]


def test_a_restarted_node_outgrows_the_incarnation_others_remember() -> None:
    a = Membership("a", info("a"), rng=random.Random(1), now=0.0, params=PARAMS)
    a.on_message("b", PushPull(updates=(Dead(node_id="a", incarnation=7, by="b"),)), 1.0)
    assert a.incarnation == 8


def test_news_of_a_never_seen_node_that_is_not_its_alive_is_ignored() -> None:
    a = Membership("a", info("a"), rng=random.Random(1), now=0.0, params=PARAMS)
    a.on_message("b", Announce(updates=(Dead(node_id="z", incarnation=1, by="b"),)), 1.0)
    assert a.member("z") is None


def test_a_graceful_leave_is_seen_as_left_not_dead() -> None:
    net = Net("a", "b", "c")
    net.join_all()
    net.run(until=2.0)
    net.nodes["c"].leave(2.0)
    net.pump(2.0)
    assert net.state("a", "c") is MemberState.LEFT
    assert net.state("b", "c") is MemberState.LEFT


def test_approvals_merge_last_writer_wins_and_spread() -> None:
    net = Net("a", "b", "c")
    net.join_all()
    net.run(until=1.0)
    net.nodes["a"].decide_approval("c", "approved", 1.0)
    net.run(until=3.0)
    assert net.nodes["b"].approval_of("c") == "approved"
    late = Approval(node_id="c", decision="rejected", at=0.5, by="z")
    net.nodes["b"].on_message("z", Announce(updates=(late,)), 3.0)
    assert net.nodes["b"].approval_of("c") == "approved"  # older than what b knows


def test_piggybacked_updates_are_bounded_per_message() -> None:
    a = Membership("a", info("a"), rng=random.Random(1), now=0.0, params=PARAMS)
    updates = tuple(Alive(node_id=f"n{i}", incarnation=0, info=info(f"n{i}")) for i in range(50))
    a.on_message("x", PushPull(updates=updates), 0.0)
    a.take_outputs()
    a.on_message("n1", Ping(seq=3), 0.1)
    (ack,) = [c for c in a.take_outputs()[0] if isinstance(c, Send)]
    assert isinstance(ack.message, Ack)
    assert len(ack.message.updates) == PARAMS.max_piggyback


def test_dead_members_are_forgotten_after_the_retention_period() -> None:
    a = Membership("a", info("a"), rng=random.Random(1), now=0.0, params=PARAMS)
    a.on_message("x", PushPull(updates=(Alive(node_id="b", incarnation=0, info=info("b")),)), 0.0)
    a.on_message("x", Announce(updates=(Dead(node_id="b", incarnation=0, by="x"),)), 1.0)
    a.tick(1.0 + PARAMS.dead_retention_s - 1)
    assert a.member("b") is not None
    a.tick(1.0 + PARAMS.dead_retention_s + 1)
    assert a.member("b") is None


def test_rendezvous_ranking_is_stable_and_moves_only_what_ranked_a_removed_node_first() -> None:
    nodes = [f"n{i}" for i in range(20)]
    jobs = [f"j-{i}" for i in range(500)]
    before = {job: rank(job, nodes)[0] for job in jobs}
    assert before == {job: rank(job, list(reversed(nodes)))[0] for job in jobs}
    remaining = [n for n in nodes if n != "n3"]
    after = {job: rank(job, remaining)[0] for job in jobs}
    moved = [job for job in jobs if before[job] != after[job]]
    assert moved and all(before[job] == "n3" for job in moved)
    assert replica_set("j-1", nodes, 3) == rank("j-1", nodes)[:3]
    assert len(set(before.values())) > 15  # jobs spread over the nodes


# --- push-pull by digest ----------------------------------------------------------------------


def _alone(node_id: str, *known: str) -> Membership:
    """A membership that knows `known` (alive, incarnation 0), and nothing pending to send."""
    node = Membership(node_id, info(node_id), rng=random.Random(7), now=0.0, params=PARAMS)
    updates = tuple(Alive(node_id=k, incarnation=0, info=info(k)) for k in known)
    node.on_message("x", PushPull(updates=updates), 0.0)
    node.take_outputs()
    return node


def _exchange(a: Membership, b: Membership, now: float = 1.0) -> list[PushPull]:
    """`a` starts a push-pull with `b`; deliver until quiet; every PushPull sent, in order."""
    names = {a.self_id: a, b.self_id: b}
    a._push_pull(b.self_id, reply=True)
    sent: list[PushPull] = []
    for _ in range(20):
        moved = False
        for sender in (a, b):
            for command in sender.take_outputs()[0]:
                if isinstance(command, Send) and isinstance(command.message, PushPull):
                    sent.append(command.message)
                    names[command.to].on_message(sender.self_id, command.message, now)
                    moved = True
        if not moved:
            return sent
    raise AssertionError("the exchange did not end")


def _view(node: Membership) -> dict[str, tuple[int, MemberState]]:
    view = {m.id: (m.incarnation, m.state) for m in node.members.values()}
    view[node.self_id] = (node.incarnation, MemberState.ALIVE)
    return view


def test_a_converged_push_pull_is_one_message_of_bucket_hashes_and_no_entries() -> None:
    ids = [f"n{i}" for i in range(40)]
    a, b = _alone("a", "b", *ids), _alone("b", "a", *ids)
    sent = _exchange(a, b)
    assert len(sent) == 1
    assert sent[0].updates == ()
    assert len(sent[0].buckets) == 4 * 16  # 42 entries: 16 buckets of 4 bytes


def test_push_pull_by_digest_fetches_only_the_entries_that_differ_both_ways() -> None:
    ids = [f"n{i}" for i in range(40)]
    a, b = _alone("a", "b", *ids), _alone("b", "a", *ids)
    a.on_message("x", Announce(updates=(Suspect(node_id="n3", incarnation=0, by="x"),)), 0.5)
    b.on_message("x", Announce(updates=(Alive(node_id="n7", incarnation=2, info=info("n7")),)), 0.5)
    b.on_message(
        "x", Announce(updates=(Alive(node_id="new", incarnation=0, info=info("new")),)), 0.5
    )
    a.take_outputs()
    b.take_outputs()
    sent = _exchange(a, b)
    whole = [u for m in sent for u in m.updates]
    assert sorted((type(u).__name__, u.node_id) for u in whole) == [
        ("Alive", "n7"),
        ("Alive", "new"),
        ("Suspect", "n3"),
    ]
    assert _view(a) == _view(b)
    assert len(sent) <= 4
    assert _exchange(a, b)[0].updates == () and len(_exchange(b, a)) == 1  # converged now


def test_a_joining_node_gets_the_whole_view_and_gives_its_own() -> None:
    ids = [f"n{i}" for i in range(30)]
    seed = _alone("s", *ids)
    joiner = Membership("j", info("j"), rng=random.Random(3), now=0.0, params=PARAMS)
    joiner.take_outputs()
    _exchange(joiner, seed)
    assert _view(joiner) == _view(seed)
    assert seed.info_of("j") == info("j")
    assert joiner.info_of("n5") == info("n5")


def test_push_pull_tells_a_node_believed_dead_which_refutes_and_both_converge() -> None:
    a, b = _alone("a", "b", "c"), _alone("b", "a", "c")
    a.on_message("x", Announce(updates=(Dead(node_id="b", incarnation=0, by="x"),)), 0.5)
    b.on_message("x", Announce(updates=(Dead(node_id="a", incarnation=0, by="x"),)), 0.5)
    a.take_outputs()
    b.take_outputs()
    _exchange(a, b)
    assert a.incarnation == 1 and b.incarnation == 1
    assert a.member("b").state is MemberState.ALIVE  # type: ignore[union-attr]
    assert b.member("a").state is MemberState.ALIVE  # type: ignore[union-attr]
    assert _view(a) == _view(b)


def test_push_pull_converges_approvals() -> None:
    a, b = _alone("a", "b", "c"), _alone("b", "a", "c")
    a.decide_approval("c", "approved", 1.0)
    b.decide_approval("c", "rejected", 2.0)
    a.take_outputs()
    b.take_outputs()
    _exchange(a, b)
    assert a.approval_of("c") == b.approval_of("c") == "rejected"
    assert len(_exchange(a, b)) == 1


def test_random_push_pulls_converge_a_mesh_of_diverged_views() -> None:
    rng = random.Random(11)
    ids = [f"n{i}" for i in range(60)]
    nodes = {
        i: Membership(i, info(i), rng=random.Random(n), now=0.0, params=PARAMS)
        for n, i in enumerate(ids[:8])
    }
    for node in nodes.values():  # each knows a random part of the mesh, some of it stale
        known = rng.sample(ids, 30)
        updates = [Alive(node_id=k, incarnation=rng.randint(0, 3), info=info(k)) for k in known]
        node.on_message("x", PushPull(updates=tuple(updates)), 0.0)
        node.take_outputs()
    order = sorted(nodes)
    for _ in range(3):
        for i, left in enumerate(order):
            _exchange(nodes[left], nodes[order[(i + 1) % len(order)]])
    views = [_view(node) for node in nodes.values()]
    assert all(view == views[0] for view in views)


def test_a_load_change_travels_as_a_refresh_and_is_applied_where_the_offer_matches() -> None:
    a, b = _alone("a", "b"), _alone("b", "a")
    loaded = a.replace_info(free=ResourceAmounts(cpu_millicores=500), running=2)
    a.update_self(loaded, 1.0, announce=False)
    a.on_message("b", Ping(seq=1), 1.0)
    (ack,) = [c.message for c in a.take_outputs()[0] if isinstance(c, Send)]
    assert isinstance(ack, Ack)
    (refresh,) = [u for u in ack.updates if u.node_id == "a"]
    assert isinstance(refresh, Refresh)
    b.on_message("a", ack, 1.1)
    assert b.info_of("a") == loaded
    assert b.member("a").incarnation == 1  # type: ignore[union-attr]
    # A copy of another advertisement (new labels it missed) ignores it; push-pull repairs.
    c = _alone("c")
    relabeled = replace(info("a"), addrs=("/ip4/10.0.0.1/tcp/1",))
    c.on_message("x", PushPull(updates=(Alive(node_id="a", incarnation=0, info=relabeled),)), 0.0)
    c.on_message("a", ack, 1.1)
    assert c.info_of("a") == relabeled
    assert c.stats["refreshes_ignored"] == 1
    _exchange(c, a)
    assert c.info_of("a") == loaded


def test_a_label_change_still_travels_whole() -> None:
    a = _alone("a", "b")
    a.update_self(replace(info("a"), roles=("compute",)), 1.0, announce=False)
    a.on_message("b", Ping(seq=1), 1.0)
    (ack,) = [c.message for c in a.take_outputs()[0] if isinstance(c, Send)]
    assert isinstance(ack, Ack)
    (update,) = [u for u in ack.updates if u.node_id == "a"]
    assert isinstance(update, Alive)


def test_malformed_digests_are_ignored() -> None:
    a = _alone("a", "b")
    a.on_message("b", PushPull(updates=(), buckets=b"\x01\x02\x03"), 1.0)
    a.on_message("b", PushPull(updates=(), bucket_count=-1, differ=(5,), digests=((1, 2, 3),)), 1.0)
    a.on_message("b", PushPull(updates=(), want=(123456789,)), 1.0)
    assert [c for c in a.take_outputs()[0] if isinstance(c, Send)] == []
