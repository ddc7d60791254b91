"""Who is in the mesh and who is alive: SWIM with suspicion, piggybacking and push-pull.

Rules of this module:
- Every membership decision lives here; this module knows nothing of jobs. It returns what
  to send (`Send`, `Publish`) and which members changed (`MemberChange`); the node core
  decides what a change means for jobs.
- Liveness (SWIM, Das et al. 2002, with memberlist's refinements): each period one member is
  probed directly (`Ping`); without an answer within `probe_timeout_s`, `indirect_probes`
  others are asked to probe it (`PingReq`); without any answer by the end of the period it
  becomes suspect. A suspect that hears of it refutes with a higher incarnation; otherwise
  it is declared dead after a suspicion timeout that grows with log(n).
- Dissemination: updates ride on probes and acks (each sent `retransmit_mult·log(n)` times);
  what this node originates (its join, label changes, leave, deaths it declared, approvals
  made here) is also published as gossip, batched, at most once per `gossip_interval_s`;
  push-pull with one random member repairs what both lost. No message goes to every node
  from every node: per-node cost grows with log(n), not n.
- Push-pull is by digest (memberlist sends whole views; at 10,000 members that is megabytes
  per exchange): the initiator sends its view hashed into buckets, and only the buckets that
  differ are compared entry by entry, (key hash, incarnation, rank), and only entries that
  differ travel whole (`PushPull`). A converged exchange is one message of 4 bytes a bucket.
  An entry is a member (key: its id; a later (incarnation, rank) wins, rank alive < suspect
  < dead < left, which is the order `_apply` accepts) or an approval (key: "approval:" + id;
  differing ones are sent both ways and merged last-writer-wins).
- A load-only change of this node's advertisement travels as a `Refresh` (the new load and a
  hash of the rest) instead of an `Alive` with the whole `MemberInfo`; a receiver whose copy
  does not match that hash ignores it, and its next push-pull fetches the whole entry.
- Incarnations order claims about a node; only the node itself raises its own. Approvals
  (operator decisions) merge last-writer-wins by (time, author).
- Bounded: members (dead ones are forgotten after `dead_retention_s`), the piggyback queue,
  outstanding indirect probes.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

import msgspec
from msgspec.structs import replace

from meshnode.core.commands import Publish, Send
from meshnode.core.ids import Rng
from meshnode.core.messages import (
    Ack,
    Alive,
    Announce,
    Approval,
    Dead,
    Left,
    MemberInfo,
    Message,
    Ping,
    PingReq,
    PushPull,
    Refresh,
    Suspect,
    Update,
)
from meshnode.core.resources import ResourceAmounts

__all__ = [
    "Member",
    "MemberChange",
    "MemberState",
    "Membership",
    "MembershipParams",
    "offer_hash",
]


class MemberState(enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"

    @property
    def reachable(self) -> bool:
        return self in (MemberState.ALIVE, MemberState.SUSPECT)


@dataclass(frozen=True, slots=True)
class MembershipParams:
    probe_interval_s: float = 1.0
    probe_timeout_s: float = 0.4
    indirect_probes: int = 3
    suspicion_mult: float = 4.0
    min_suspicion_s: float = 3.0
    retransmit_mult: int = 3
    max_piggyback: int = 8
    push_pull_interval_s: float = 15.0
    gossip_interval_s: float = 1.0
    max_gossip_updates: int = 16
    dead_retention_s: float = 600.0
    # While no other member is known, seeds are asked again this often.
    seed_retry_s: float = 2.0
    max_members: int = 100_000
    max_pending_indirect: int = 1024
    # A member believed dead that still sends is told so at most this often (`heard_from`).
    told_dead_every_s: float = 5.0
    # Push-pull digests: about this many entries a bucket, within these bounds of buckets.
    entries_per_bucket: int = 4
    min_buckets: int = 16
    max_buckets: int = 4096
    # Whole entries per push-pull message (a larger answer is split: a frame has a limit).
    max_push_pull_updates: int = 2048


@dataclass(slots=True)
class Member:
    id: str
    incarnation: int
    state: MemberState
    info: MemberInfo | None
    state_since: float
    last_seen: float

    @property
    def rank(self) -> int:
        return _RANK[self.state]

    def as_update(self, by: str) -> Update:
        match self.state:
            case MemberState.ALIVE:
                assert self.info is not None
                return Alive(node_id=self.id, incarnation=self.incarnation, info=self.info)
            case MemberState.SUSPECT:
                return Suspect(node_id=self.id, incarnation=self.incarnation, by=by)
            case MemberState.DEAD:
                return Dead(node_id=self.id, incarnation=self.incarnation, by=by)
            case MemberState.LEFT:
                return Left(node_id=self.id, incarnation=self.incarnation)


@dataclass(frozen=True, slots=True)
class MemberChange:
    node_id: str
    # "joined" | "updated" | "load" | "suspect" | "dead" | "left" | "alive" | "approval";
    # "load": only the advertised free resources or running count changed.
    kind: str


@dataclass(slots=True)
class _Probe:
    target: str
    seq: int
    started_at: float
    indirect_sent: bool = False
    answered: bool = False


@dataclass(slots=True)
class _Broadcast:
    update: Update
    transmits_left: int


@dataclass(slots=True)
class _Outputs:
    commands: list[Send | Publish] = field(default_factory=list)
    changes: list[MemberChange] = field(default_factory=list)


_APPROVAL_KEY: Final = "approval:"
# The order in which claims about one incarnation win (`_apply`): a digest entry
# (key hash, incarnation, rank) is newer than another of the same key if it is larger.
_RANK: Final = {
    MemberState.ALIVE: 0,
    MemberState.SUSPECT: 1,
    MemberState.DEAD: 2,
    MemberState.LEFT: 3,
}
# An approval's digest entry: (key hash, hash of (at, by, decision), _APPROVAL_RANK).
_APPROVAL_RANK: Final = 9
_MAX_BUCKETS_ACCEPTED: Final = 65_536
_OFFER_ENCODER: Final = msgspec.msgpack.Encoder(order="deterministic")
_NO_LOAD: Final = ResourceAmounts()


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _hash32(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")


def offer_hash(info: MemberInfo) -> int:
    """A hash of everything a node advertises but its load (`free`, `running`): what a
    `Refresh` must match. Encoded with sorted keys: the same on every node."""
    offer = replace(info, free=_NO_LOAD, running=0)
    return int.from_bytes(
        hashlib.blake2b(_OFFER_ENCODER.encode(offer), digest_size=8).digest(), "big"
    )


@dataclass(frozen=True, slots=True)
class _Entry:
    """One entry of this node's view as push-pull compares it."""

    key_hash: int
    a: int  # incarnation (member) or hash of the approval
    rank: int
    update: Update

    @property
    def digest(self) -> tuple[int, int, int]:
        return (self.key_hash, self.a, self.rank)

    @property
    def bucket_hash(self) -> int:
        """Nonzero (zero marks an empty bucket)."""
        return _hash32(f"{self.key_hash}\x00{self.a}\x00{self.rank}") or 1

    def newer_than(self, a: int, rank: int) -> bool:
        if _APPROVAL_RANK in (self.rank, rank):
            return (self.a, self.rank) != (a, rank)  # both ways: the merge decides
        return (self.a, self.rank) > (a, rank)

    def older_than(self, a: int, rank: int) -> bool:
        if _APPROVAL_RANK in (self.rank, rank):
            return (self.a, self.rank) != (a, rank)
        return (self.a, self.rank) < (a, rank)


def _same_offer(old: MemberInfo, new: MemberInfo) -> bool:
    """Whether two advertisements differ at most in load (free resources, running)."""
    return (
        old.node == new.node
        and old.roles == new.roles
        and old.addrs == new.addrs
        and old.version == new.version
        and old.api == new.api
    )


class Membership:
    def __init__(
        self,
        self_id: str,
        info: MemberInfo,
        *,
        rng: Rng,
        now: float,
        params: MembershipParams | None = None,
        approvals: Iterable[Approval] = (),
    ) -> None:
        self.self_id = self_id
        self.params = params or MembershipParams()
        self._rng = rng
        self.info = info
        self.incarnation = 0
        self.members: dict[str, Member] = {}
        self.approvals: dict[str, Approval] = {a.node_id: a for a in approvals}
        self._seeds: dict[str, tuple[str, ...]] = {}
        self._seq = 0
        self._probe: _Probe | None = None
        self._probe_order: list[str] = []
        self._next_probe_at = now
        self._next_push_pull_at = now + self.params.push_pull_interval_s
        self._next_gossip_at = now
        self._next_seed_at = now
        # seq of a probe made for someone else → (who asked, their seq)
        self._indirect: dict[int, tuple[str, int, float]] = {}
        self._broadcasts: dict[str, _Broadcast] = {}
        self._to_gossip: dict[str, Update] = {}
        self._out = _Outputs()
        self.leaving = False
        # Bumped on every change of who is known, reachable or approved: views derived from
        # the members (the requester candidates) are rebuilt only when it moves.
        self.version = 0
        self._told_dead: dict[str, float] = {}  # when a "dead" sender was last told so
        self._index_version = -1
        self._suspects: list[Member] = []
        self._gone: list[Member] = []
        self.stats: dict[str, int] = {
            "updates_applied": 0,
            "probes_failed": 0,
            "push_pull_entries_sent": 0,
            "refreshes_ignored": 0,
        }
        # node id → (its info, offer_hash of it): checking a `Refresh` hashes nothing twice.
        self._offer_hashes: dict[str, tuple[MemberInfo, int]] = {}
        self._originate(Alive(node_id=self_id, incarnation=0, info=info))

    # --- views --------------------------------------------------------------------------------

    def member(self, node_id: str) -> Member | None:
        return self.members.get(node_id)

    def reachable_ids(self) -> list[str]:
        """Members believed up (alive or suspect), this node included, sorted."""
        ids = [m.id for m in self.members.values() if m.state.reachable]
        return sorted([self.self_id, *ids])

    def is_reachable(self, node_id: str) -> bool:
        if node_id == self.self_id:
            return True
        member = self.members.get(node_id)
        return member is not None and member.state.reachable

    def is_gone(self, node_id: str) -> bool:
        """Declared dead or left (a node never heard of is not gone: it may be new)."""
        member = self.members.get(node_id)
        return member is not None and not member.state.reachable

    def info_of(self, node_id: str) -> MemberInfo | None:
        if node_id == self.self_id:
            return self.info
        member = self.members.get(node_id)
        return member.info if member else None

    def addrs_of(self, node_id: str) -> tuple[str, ...]:
        info = self.info_of(node_id)
        if info is not None and info.addrs:
            return info.addrs
        return self._seeds.get(node_id, ())

    def approval_of(self, node_id: str) -> str:
        approval = self.approvals.get(node_id)
        return approval.decision if approval else "pending"

    def next_deadline(self) -> float:
        deadlines = [self._next_probe_at, self._next_push_pull_at]
        probe = self._probe
        # An answered probe needs no indirect round: its timeout is no deadline (counting it
        # made every driver spin on a deadline in the past until the next probe).
        if probe is not None and not probe.indirect_sent and not probe.answered:
            deadlines.append(probe.started_at + self.params.probe_timeout_s)
        if self._to_gossip:
            deadlines.append(self._next_gossip_at)
        if self._seeds and not self._others_known():
            deadlines.append(self._next_seed_at)
        suspects, _ = self._index()
        if suspects:
            timeout = self._suspicion_timeout()
            deadlines.extend(m.state_since + timeout for m in suspects)
        return min(deadlines)

    # --- inputs -------------------------------------------------------------------------------

    def take_outputs(self) -> tuple[list[Send | Publish], list[MemberChange]]:
        out, self._out = self._out, _Outputs()
        return out.commands, out.changes

    def add_seed(self, node_id: str, addrs: tuple[str, ...], now: float) -> None:
        """A peer learned outside the mesh (bootstrap address, mDNS): ask it for its view."""
        if node_id == self.self_id:
            return
        self._seeds[node_id] = addrs
        self._push_pull(node_id, reply=True)
        self._next_seed_at = now + self.params.seed_retry_s

    def update_self(self, info: MemberInfo, now: float, *, announce: bool) -> None:
        """This node's advertisement changed; `announce` also gossips it (label changes).
        A change of load alone travels as a `Refresh`."""
        old_offer = offer_hash(self.info)
        self.info = info
        self.incarnation += 1
        update: Update = Alive(node_id=self.self_id, incarnation=self.incarnation, info=info)
        if not announce and offer_hash(info) == old_offer:
            update = Refresh(
                node_id=self.self_id,
                incarnation=self.incarnation,
                offer_hash=old_offer,
                free=info.free,
                running=info.running,
            )
        if announce:
            self._originate(update)
        else:
            self._queue_broadcast(self.self_id, update)

    def leave(self, now: float) -> None:
        self.leaving = True
        self._originate(Left(node_id=self.self_id, incarnation=self.incarnation))
        self._next_gossip_at = now
        self._flush_gossip(now)
        left = Left(node_id=self.self_id, incarnation=self.incarnation)
        for member in self._sample(self._reachable_others(), self.params.indirect_probes):
            self._send(member, PushPull(updates=(left,)))

    def decide_approval(self, node_id: str, decision: str, now: float) -> None:
        approval = Approval(node_id=node_id, decision=decision, at=now, by=self.self_id)
        self._apply(approval, now)
        self._to_gossip[_APPROVAL_KEY + node_id] = approval

    def forget(self, node_id: str) -> None:
        """An operator deleted the node: drop it (it may rejoin with a higher incarnation)."""
        self.members.pop(node_id, None)
        self._seeds.pop(node_id, None)
        self.version += 1

    def heard_from(self, sender: str, now: float) -> None:
        """Any message from `sender` arrived. If this node believes it dead, push-pull with
        it: it learns who this side believes dead and they refute at once, and this side
        learns its view. After a partition heals, each side believes the other dead and
        otherwise learned better only from the periodic push-pull (one random member every
        15 s or more), while the requesters of both sides fought over their jobs
        (simulator: 5x the events, hundreds of transient Count violations)."""
        member = self.members.get(sender)
        if member is None or member.state is not MemberState.DEAD:
            return
        if now < self._told_dead.get(sender, -math.inf) + self.params.told_dead_every_s:
            return
        self._told_dead[sender] = now
        if len(self._told_dead) > self.params.max_pending_indirect:
            self._told_dead.clear()
        self._push_pull(sender, reply=True)

    def on_message(self, sender: str, message: Message, now: float) -> None:
        member = self.members.get(sender)
        if member is not None:
            member.last_seen = now
        match message:
            case Ping():
                self._apply_all(message.updates, now)
                self._send(sender, Ack(seq=message.seq, updates=self._piggyback()))
            case Ack():
                self._apply_all(message.updates, now)
                self._acked(sender, message.seq, now)
            case PingReq():
                self._apply_all(message.updates, now)
                if len(self._indirect) < self.params.max_pending_indirect:
                    self._seq += 1
                    self._indirect[self._seq] = (sender, message.seq, now)
                    self._send(
                        message.target,
                        Ping(seq=self._seq, updates=self._piggyback(), on_behalf=sender),
                    )
            case PushPull():
                incarnation = self.incarnation
                self._apply_all(message.updates, now)
                self._anti_entropy(sender, message, refuted=self.incarnation != incarnation)
            case Announce():
                self._apply_all(message.updates, now)
            case _:
                raise AssertionError(f"not a membership message: {type(message).__name__}")

    def tick(self, now: float) -> None:
        self._expire_suspects(now)
        self._forget_dead(now)
        self._run_probe(now)
        if now >= self._next_push_pull_at:
            self._next_push_pull_at = now + self._push_pull_interval()
            # Dead members (not yet forgotten) are candidates too: after a partition heals,
            # each side believes the other dead and probes only its own side, so without this
            # nobody ever tells a "dead" node to refute, and the mesh stays split for good
            # (found by the simulator; Serf's reconnect to failed members does the same job).
            others = sorted(m.id for m in self.members.values() if m.state is not MemberState.LEFT)
            if others:
                self._push_pull(self._rng.choice(others), reply=True)
        if self._seeds and not self._others_known() and now >= self._next_seed_at:
            self._next_seed_at = now + self.params.seed_retry_s
            for seed in sorted(self._seeds):
                self._push_pull(seed, reply=True)
        self._flush_gossip(now)
        cutoff = now - 10 * self.params.probe_interval_s
        for seq in [s for s, (_, _, at) in self._indirect.items() if at < cutoff]:
            del self._indirect[seq]

    # --- probing ------------------------------------------------------------------------------

    def _run_probe(self, now: float) -> None:
        probe = self._probe
        if (
            probe is not None
            and not probe.answered
            and not probe.indirect_sent
            and now >= probe.started_at + self.params.probe_timeout_s
        ):
            probe.indirect_sent = True
            helpers = [m for m in self._reachable_others() if m != probe.target]
            for helper in self._sample(helpers, self.params.indirect_probes):
                request = PingReq(seq=probe.seq, target=probe.target, updates=self._piggyback())
                self._send(helper, request)
        if now < self._next_probe_at:
            return
        if probe is not None and not probe.answered:
            self.stats["probes_failed"] += 1
            target = self.members.get(probe.target)
            if target is not None and target.state is MemberState.ALIVE:
                self._apply(
                    Suspect(node_id=target.id, incarnation=target.incarnation, by=self.self_id),
                    now,
                )
        self._probe = None
        self._next_probe_at = now + self.params.probe_interval_s
        target_id = self._next_probe_target()
        if target_id is None:
            return
        self._seq += 1
        self._probe = _Probe(target=target_id, seq=self._seq, started_at=now)
        self._send(target_id, Ping(seq=self._seq, updates=self._piggyback()))

    def _next_probe_target(self) -> str | None:
        while self._probe_order:
            candidate = self._probe_order.pop()
            if candidate in self.members and self.members[candidate].state.reachable:
                return candidate
        others = self._reachable_others()
        if not others:
            return None
        self._rng.shuffle(others)
        self._probe_order = others
        return self._probe_order.pop()

    def _acked(self, sender: str, seq: int, now: float) -> None:
        indirect = self._indirect.pop(seq, None)
        if indirect is not None:
            asker, their_seq, _ = indirect
            self._send(asker, Ack(seq=their_seq, updates=self._piggyback()))
            return
        probe = self._probe
        if probe is not None and probe.seq == seq:
            probe.answered = True

    def _index(self) -> tuple[list[Member], list[Member]]:
        """Suspects and gone (dead or left) members, rebuilt only when `version` moved:
        scanning every member on every tick was a hot spot of large simulations."""
        if self._index_version != self.version:
            self._index_version = self.version
            members = self.members.values()
            self._suspects = [m for m in members if m.state is MemberState.SUSPECT]
            self._gone = [m for m in members if not m.state.reachable]
        return self._suspects, self._gone

    def _expire_suspects(self, now: float) -> None:
        suspects, _ = self._index()
        if not suspects:
            return
        timeout = self._suspicion_timeout()
        for member in list(suspects):
            if member.state is MemberState.SUSPECT and now >= member.state_since + timeout:
                dead = Dead(node_id=member.id, incarnation=member.incarnation, by=self.self_id)
                self._apply(dead, now)
                self._to_gossip[member.id] = dead

    def _forget_dead(self, now: float) -> None:
        cutoff = now - self.params.dead_retention_s
        _, gone = self._index()
        for member in list(gone):
            gone_long = not member.state.reachable and member.state_since < cutoff
            if gone_long and self.members.get(member.id) is member:
                del self.members[member.id]
                self.version += 1

    def _suspicion_timeout(self) -> float:
        n = len(self.members) + 1
        scaled = self.params.suspicion_mult * max(1.0, math.log10(n)) * self.params.probe_interval_s
        return max(self.params.min_suspicion_s, scaled)

    # --- merging updates ----------------------------------------------------------------------

    def _apply_all(self, updates: Iterable[Update], now: float) -> None:
        for update in updates:
            self._apply(update, now)

    def _apply(self, update: Update, now: float) -> None:
        if isinstance(update, Approval):
            current = self.approvals.get(update.node_id)
            if current is None or (update.at, update.by) > (current.at, current.by):
                self.approvals[update.node_id] = update
                self._queue_broadcast(_APPROVAL_KEY + update.node_id, update)
                self._changed(update.node_id, "approval")
                if update.decision == "deleted":
                    self.forget(update.node_id)
            return
        if update.node_id == self.self_id:
            self._about_me(update)
            return
        member = self.members.get(update.node_id)
        if isinstance(update, Refresh):
            self._apply_refresh(member, update, now)
            return
        if member is None:
            if not isinstance(update, Alive) or len(self.members) >= self.params.max_members:
                return  # news about a node we never saw alive: wait for its own word
            self.members[update.node_id] = Member(
                id=update.node_id,
                incarnation=update.incarnation,
                state=MemberState.ALIVE,
                info=update.info,
                state_since=now,
                last_seen=now,
            )
            self._accepted(update, "joined")
            return
        match update:
            case Alive():
                self._apply_alive(member, update, now, update)
            case Suspect():
                if member.state is MemberState.SUSPECT and update.incarnation > member.incarnation:
                    # Still suspect (the timer runs on), of a later incarnation: taking it keeps
                    # push-pull digests converging (`_Entry`).
                    member.incarnation = update.incarnation
                    return
                if member.state is not MemberState.ALIVE or update.incarnation < member.incarnation:
                    return
                member.state, member.state_since = MemberState.SUSPECT, now
                member.incarnation = update.incarnation
                self._accepted(update, "suspect")
            case Dead():
                if member.state is MemberState.DEAD and update.incarnation > member.incarnation:
                    member.incarnation = update.incarnation  # as for Suspect above
                    return
                if not member.state.reachable or update.incarnation < member.incarnation:
                    return
                member.state, member.state_since = MemberState.DEAD, now
                member.incarnation = update.incarnation
                self._accepted(update, "dead")
            case Left():
                if member.state is MemberState.LEFT and update.incarnation > member.incarnation:
                    member.incarnation = update.incarnation  # as for Suspect above
                    return
                if member.state is MemberState.LEFT or update.incarnation < member.incarnation:
                    return
                member.state, member.state_since = MemberState.LEFT, now
                member.incarnation = update.incarnation
                self._accepted(update, "left")

    def _apply_alive(self, member: Member, update: Alive, now: float, spread: Update) -> None:
        """`spread` is what is passed on: the `Alive`, or the `Refresh` it was made from."""
        if update.incarnation <= member.incarnation:
            return
        was, was_info = member.state, member.info
        member.incarnation, member.info = update.incarnation, update.info
        if was is not MemberState.ALIVE:
            member.state, member.state_since = MemberState.ALIVE, now
            kind = "alive"
        elif was_info is not None and _same_offer(was_info, update.info):
            kind = "load"  # only free resources / running count moved
        else:
            kind = "updated"
        self.stats["updates_applied"] += 1
        self._queue_broadcast(update.node_id, spread)
        self._changed(update.node_id, kind)

    def _apply_refresh(self, member: Member | None, update: Refresh, now: float) -> None:
        if member is None or member.info is None or update.incarnation <= member.incarnation:
            return
        if self._offer_hash_of(member.id, member.info) != update.offer_hash:
            # This copy of the node's advertisement is not the one the load applies to:
            # ignored, this entry stays older in digests and the next push-pull fetches it.
            self.stats["refreshes_ignored"] += 1
            return
        info = replace(member.info, free=update.free, running=update.running)
        alive = Alive(node_id=update.node_id, incarnation=update.incarnation, info=info)
        self._apply_alive(member, alive, now, update)

    def _offer_hash_of(self, node_id: str, info: MemberInfo) -> int:
        cached = self._offer_hashes.get(node_id)
        if cached is not None and cached[0] is info:
            return cached[1]
        value = offer_hash(info)
        if len(self._offer_hashes) >= self.params.max_members:
            self._offer_hashes.clear()
        self._offer_hashes[node_id] = (info, value)
        return value

    def _about_me(self, update: Alive | Suspect | Dead | Left | Refresh) -> None:
        """Others' claims about this node: refute suspicion and death, raise a stale
        incarnation (after a restart others may remember a higher one)."""
        if self.leaving:
            return
        refute = (
            isinstance(update, Suspect | Dead | Left) and update.incarnation >= self.incarnation
        )
        stale = isinstance(update, Alive | Refresh) and update.incarnation > self.incarnation
        if refute or stale:
            self.incarnation = update.incarnation + 1
            self._originate(self._self_update())

    def _accepted(self, update: Alive | Suspect | Dead | Left | Refresh, kind: str) -> None:
        self.stats["updates_applied"] += 1
        self._queue_broadcast(update.node_id, update)
        self._changed(update.node_id, kind)

    def _changed(self, node_id: str, kind: str) -> None:
        self.version += 1
        self._out.changes.append(MemberChange(node_id, kind))

    # --- dissemination ------------------------------------------------------------------------

    def _self_update(self) -> Alive:
        return Alive(node_id=self.self_id, incarnation=self.incarnation, info=self.info)

    def _originate(self, update: Update) -> None:
        key = update.node_id
        self._queue_broadcast(key, update)
        self._to_gossip[key] = update

    def _queue_broadcast(self, key: str, update: Update) -> None:
        n = len(self.members) + 1
        transmits = self.params.retransmit_mult * max(1, math.ceil(math.log10(n + 1)))
        self._broadcasts[key] = _Broadcast(update, transmits)

    def _piggyback(self) -> tuple[Update, ...]:
        chosen = sorted(self._broadcasts.items(), key=lambda kv: -kv[1].transmits_left)
        chosen = chosen[: self.params.max_piggyback]
        for key, broadcast in chosen:
            broadcast.transmits_left -= 1
            if broadcast.transmits_left <= 0:
                del self._broadcasts[key]
        return tuple(b.update for _, b in chosen)

    def _flush_gossip(self, now: float) -> None:
        if not self._to_gossip or now < self._next_gossip_at:
            return
        keys = sorted(self._to_gossip)[: self.params.max_gossip_updates]
        updates = tuple(self._to_gossip.pop(key) for key in keys)
        self._out.commands.append(Publish(Announce(updates=updates)))
        self._next_gossip_at = now + self.params.gossip_interval_s

    def _push_pull(self, peer: str, *, reply: bool) -> None:
        """Start an exchange with `peer`: this view as bucket hashes (see PushPull)."""
        entries = self._entries()
        count = self._bucket_count(len(entries))
        buckets = self._bucket_hashes(entries, count)
        packed = b"".join(h.to_bytes(4, "big") for h in buckets)
        self._send(peer, PushPull(updates=(), reply=reply, buckets=packed))

    def _anti_entropy(self, peer: str, message: PushPull, *, refuted: bool) -> None:
        """Answer one push-pull message (its `updates` are applied already): compare what it
        carries with this view and send what the peer lacks and ask for what this side
        lacks. Only `buckets` and `differ` are answered; anything malformed is ignored."""
        updates: list[Update] = [self._self_update()] if refuted else []
        differ: list[int] = []
        digests: list[tuple[int, int, int]] = []
        want: list[int] = []
        entries: list[_Entry] | None = None
        count = 0
        if message.buckets:
            count = len(message.buckets) // 4
            if len(message.buckets) % 4 == 0 and count <= _MAX_BUCKETS_ACCEPTED:
                entries = self._entries()
                by_bucket = self._by_bucket(entries, count)
                mine = self._bucket_hashes(entries, count)
                for index in range(count):
                    theirs = int.from_bytes(message.buckets[4 * index : 4 * index + 4], "big")
                    if theirs == mine[index]:
                        continue
                    here = by_bucket.get(index, [])
                    if theirs == 0:  # they have nothing there: all of it, without digests
                        updates.extend(e.update for e in here)
                    else:
                        differ.append(index)
                        digests.extend(e.digest for e in here)
        elif message.reply and not message.differ and not message.want:
            self._push_pull(peer, reply=False)  # a full-view peer asked: start an exchange
        if message.differ and 0 < message.bucket_count <= _MAX_BUCKETS_ACCEPTED:
            entries = self._entries()
            count = message.bucket_count
            compared = set(message.differ)
            theirs_by_key = {d[0]: d for d in message.digests if d[0] % count in compared}
            for entry in entries:
                if entry.key_hash % count not in compared:
                    continue
                other = theirs_by_key.pop(entry.key_hash, None)
                if other is None or entry.newer_than(other[1], other[2]):
                    updates.append(entry.update)
                if other is not None and entry.older_than(other[1], other[2]):
                    want.append(entry.key_hash)
            # What only they hold: unless it is news of a node gone, which `_apply` would
            # drop anyway (news about a node never seen alive).
            gone = (_RANK[MemberState.DEAD], _RANK[MemberState.LEFT])
            want.extend(k for k, _, rank in theirs_by_key.values() if rank not in gone)
        if message.want:
            if entries is None:
                entries = self._entries()
            wanted = set(message.want[: self.params.max_members])
            updates.extend(e.update for e in entries if e.key_hash in wanted)
        if not (updates or differ or want):
            return
        self.stats["push_pull_entries_sent"] += len(updates)
        step = self.params.max_push_pull_updates
        chunks = [updates[i : i + step] for i in range(0, len(updates), step)] or [[]]
        self._send(
            peer,
            PushPull(
                updates=tuple(chunks[0]),
                bucket_count=count if differ else 0,
                differ=tuple(differ),
                digests=tuple(digests),
                want=tuple(want),
            ),
        )
        for chunk in chunks[1:]:
            self._send(peer, PushPull(updates=tuple(chunk)))

    def _entries(self) -> list[_Entry]:
        """This view as push-pull compares it: this node, every member, every approval."""
        self_rank = _RANK[MemberState.LEFT if self.leaving else MemberState.ALIVE]
        self_update: Update = (
            Left(node_id=self.self_id, incarnation=self.incarnation)
            if self.leaving
            else self._self_update()
        )
        entries = [_Entry(_hash64(self.self_id), self.incarnation, self_rank, self_update)]
        for member in self.members.values():
            if member.info is None:
                continue
            update = member.as_update(self.self_id)
            entries.append(_Entry(_hash64(member.id), member.incarnation, member.rank, update))
        for approval in self.approvals.values():
            version = _hash32(f"{approval.at!r}\x00{approval.by}\x00{approval.decision}")
            key = _hash64(_APPROVAL_KEY + approval.node_id)
            entries.append(_Entry(key, version, _APPROVAL_RANK, approval))
        return entries

    def _bucket_count(self, entries: int) -> int:
        params = self.params
        wanted = max(1, math.ceil(entries / params.entries_per_bucket))
        count = 1 << (wanted - 1).bit_length()
        return max(params.min_buckets, min(params.max_buckets, count))

    @staticmethod
    def _by_bucket(entries: list[_Entry], count: int) -> dict[int, list[_Entry]]:
        grouped: dict[int, list[_Entry]] = {}
        for entry in entries:
            grouped.setdefault(entry.key_hash % count, []).append(entry)
        return grouped

    @staticmethod
    def _bucket_hashes(entries: list[_Entry], count: int) -> list[int]:
        buckets = [0] * count
        for entry in entries:
            buckets[entry.key_hash % count] ^= entry.bucket_hash
        return buckets

    def _push_pull_interval(self) -> float:
        """Scaled as memberlist does: past 32 members, longer intervals keep the per-node cost
        of anti-entropy roughly flat."""
        n = len(self.members) + 1
        scale = max(1.0, math.ceil(math.log2(n) - math.log2(32)) + 1.0) if n > 32 else 1.0
        return self.params.push_pull_interval_s * scale

    # --- helpers ------------------------------------------------------------------------------

    def _send(self, peer: str, message: Message) -> None:
        self._out.commands.append(Send(peer, message, self.addrs_of(peer)))

    def _reachable_others(self) -> list[str]:
        return sorted(m.id for m in self.members.values() if m.state.reachable)

    def _others_known(self) -> bool:
        return any(m.state.reachable for m in self.members.values())

    def _sample(self, population: list[str], k: int) -> list[str]:
        if len(population) <= k:
            return population
        return list(self._rng.sample(population, k))

    def replace_info(self, **changes: object) -> MemberInfo:
        return replace(self.info, **changes)
