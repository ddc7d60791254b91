"""Everything nodes say to each other: tagged, frozen msgspec Structs and the one codec.

Rules of this module:
- Wire messages are evolved only by appending fields with defaults; the tag is the type's
  name, so renaming a message is a protocol change.
- The sender of a direct message is not a field: it is the peer id the transport
  authenticated (Noise). A message that names a node as its author (an execution update, a
  bid) is checked against that peer id by the receiver.
- A job travels as msgpack bytes of its `JobRecord` (`job` fields): msgspec cannot pick a
  spec's Params struct by the sibling `Type`, so the spec goes through the spec reader
  (`decode_job_record`), which also re-validates what a peer sent.
- `decode` turns anything a peer can send into a message or a `RemoteProtocolError`; it never
  raises anything else.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from msgspec.structs import replace

from meshnode.core.records import ExecutionRecord, HistoryEvent, JobRecord, NodeInfo
from meshnode.core.resources import ResourceAmounts
from meshnode.errors import RemoteProtocolError, SpecError
from meshnode.spec import Job
from meshnode.spec.load import job_from_document

__all__ = [
    "MAX_MESSAGE_BYTES",
    "Ack",
    "Adopt",
    "AdoptReply",
    "Alive",
    "Announce",
    "Approval",
    "AskForBid",
    "Bid",
    "Dead",
    "ExecutionReport",
    "FetchJob",
    "FetchJobReply",
    "Handover",
    "HandoverAck",
    "JobAck",
    "Left",
    "MemberInfo",
    "Message",
    "Ping",
    "PingReq",
    "PushPull",
    "Refresh",
    "Replicate",
    "ReplicateAck",
    "ReportAck",
    "RequestReply",
    "RequesterClaim",
    "StartRun",
    "StopJobRequest",
    "StopRun",
    "SubmitAck",
    "SubmitJob",
    "Suspect",
    "Update",
    "decode",
    "decode_job_record",
    "encode",
    "encode_job_record",
]

# A frame larger than this is refused by the transport before it is decoded.
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024


class _Wire(msgspec.Struct, frozen=True, kw_only=True, tag=True, omit_defaults=True):
    pass


# --- membership ---------------------------------------------------------------------------


class MemberInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a node advertises about itself; versioned by its incarnation."""

    node: NodeInfo
    addrs: tuple[str, ...] = ()
    roles: tuple[str, ...] = ("requester", "compute")
    version: str = ""
    free: ResourceAmounts = ResourceAmounts()
    running: int = 0  # executions running now (load)
    api: str = ""  # host:port of the node's HTTP API


class Alive(_Wire, frozen=True):
    node_id: str
    incarnation: int
    info: MemberInfo


class Suspect(_Wire, frozen=True):
    node_id: str
    incarnation: int
    by: str


class Dead(_Wire, frozen=True):
    node_id: str
    incarnation: int
    by: str


class Left(_Wire, frozen=True):
    node_id: str
    incarnation: int


class Approval(_Wire, frozen=True):
    """An operator's decision about a node; the latest (time, by) wins everywhere."""

    node_id: str
    decision: str  # "approved" | "rejected" | "deleted"
    at: float
    by: str


class Refresh(_Wire, frozen=True):
    """A node's new load and nothing else, in place of an `Alive` with its whole
    `MemberInfo`: a receiver whose copy of the node's advertisement, load aside, hashes to
    `offer_hash` (`membership.offer_hash`) applies it as that `Alive` at `incarnation`; any
    other receiver ignores it and is repaired by push-pull (its digest is then older)."""

    node_id: str
    incarnation: int
    offer_hash: int
    free: ResourceAmounts = ResourceAmounts()
    running: int = 0


Update = Alive | Suspect | Dead | Left | Approval | Refresh


class Ping(_Wire, frozen=True):
    seq: int
    updates: tuple[Update, ...] = ()
    # Set when probing for someone else (an indirect probe): whom to answer.
    on_behalf: str = ""


class Ack(_Wire, frozen=True):
    seq: int
    updates: tuple[Update, ...] = ()


class PingReq(_Wire, frozen=True):
    """Probe `target` for me and tell me if it answered."""

    seq: int
    target: str
    updates: tuple[Update, ...] = ()


class PushPull(_Wire, frozen=True):
    """Anti-entropy by digest, in up to four messages, each a `PushPull` (membership.py):
    1. `buckets`: the sender's view hashed into buckets (4 bytes each, big-endian; an entry
       falls in bucket `key hash % count`). A peer whose buckets all match sends nothing.
    2. `differ`: the buckets that differ (of `bucket_count`), with the sender's `digests`
       there: (key hash, incarnation, rank); `updates`: its whole entries in buckets where
       the other side had nothing.
    3. `updates`: the entries the sender holds newer; `want`: key hashes it lacks or holds
       older.
    4. `updates`: the wanted entries.
    `updates` are applied on receipt at every step. `reply` (first message) asked peers of
    the full-view protocol for their view; a message with only `updates` needs no answer."""

    updates: tuple[Update, ...]
    reply: bool = False
    buckets: bytes = b""
    bucket_count: int = 0
    differ: tuple[int, ...] = ()
    digests: tuple[tuple[int, int, int], ...] = ()
    want: tuple[int, ...] = ()


class Announce(_Wire, frozen=True):
    """Gossip (GossipSub): membership changes and approvals, batched at a bounded rate."""

    updates: tuple[Update, ...]


class RequesterClaim(_Wire, frozen=True):
    """Gossip: `node_id` is the primary requester of `job_id` from `term` on."""

    job_id: str
    term: int
    node_id: str


# --- job hand-off and replication -----------------------------------------------------------


class SubmitJob(_Wire, frozen=True):
    """Entry node → the job's primary requester."""

    request_id: str
    job: bytes


class StopJobRequest(_Wire, frozen=True):
    """Any node → the job's primary requester: a user asked to stop the job."""

    request_id: str
    job_id: str
    reason: str = ""


class RequestReply(_Wire, frozen=True):
    request_id: str
    ok: bool
    message: str = ""


class SubmitAck(_Wire, frozen=True):
    request_id: str
    job_id: str
    ok: bool = True
    message: str = ""


class Replicate(_Wire, frozen=True):
    """Primary → replica: the job's whole state as of `seq`, and the history since the last
    seq. Whole state keeps replication idempotent and gap-free (a lost `Replicate` is made
    good by the next); its cost grows with the job's executions, which is fine for batch and
    service jobs and a known cost for daemon jobs on very large meshes."""

    job_id: str
    term: int
    seq: int
    job: bytes
    executions: tuple[ExecutionRecord, ...] = ()
    history: tuple[HistoryEvent, ...] = ()


class ReplicateAck(_Wire, frozen=True):
    job_id: str
    term: int
    seq: int
    ok: bool = True
    # When refusing a stale primary: the higher term the replica has seen.
    seen_term: int = 0
    # When refusing because the job already ended here: its final state ("Completed", ...).
    ended: str = ""


class FetchJob(_Wire, frozen=True):
    """A node taking over a job asks the other holders for their newest records."""

    job_id: str


class FetchJobReply(_Wire, frozen=True):
    job_id: str
    term: int = 0
    job: bytes = b""
    executions: tuple[ExecutionRecord, ...] = ()
    # The job already ended on the answering node, which forgot its records: its final state.
    ended: str = ""


class Handover(_Wire, frozen=True):
    """A primary that is no longer top-ranked hands its records to the new top."""

    job_id: str
    term: int
    job: bytes
    executions: tuple[ExecutionRecord, ...] = ()
    # Answers to clients (entry node, answer) the old primary had not released yet: the new
    # primary releases them once it has replicated the job (else a submission accepted just
    # before a step-down was never answered, and the entry retried it forever).
    answers: tuple[tuple[str, SubmitAck | RequestReply], ...] = ()


class HandoverAck(_Wire, frozen=True):
    """The receiver of a `Handover` holds the records now: the sender may let go of them."""

    job_id: str
    term: int


# --- bidding and execution ------------------------------------------------------------------


class AskForBid(_Wire, frozen=True):
    job_id: str
    term: int
    execution_id: str
    job: bytes
    resources: ResourceAmounts


class Bid(_Wire, frozen=True):
    job_id: str
    execution_id: str
    accepted: bool
    reason: str = ""


class StartRun(_Wire, frozen=True):
    job_id: str
    term: int
    execution: ExecutionRecord
    job: bytes


class StopRun(_Wire, frozen=True):
    job_id: str
    term: int
    execution_id: str
    reason: str


class Adopt(_Wire, frozen=True):
    """A new primary asks a compute node to report its executions of the job."""

    job_id: str
    term: int


class AdoptReply(_Wire, frozen=True):
    """Compute → new primary, after its reports: every execution of the job it still has.
    What the primary believes runs there and is not listed is lost."""

    job_id: str
    term: int
    known: tuple[str, ...] = ()


class ExecutionReport(_Wire, frozen=True):
    """Compute → primary: where an execution is (retried until acknowledged)."""

    job_id: str
    execution_id: str
    seq: int
    term: int  # the highest term the compute node has seen for the job
    phase: str  # "queued" | "running" | "ended" | "refused"
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    error: str = ""


class ReportAck(_Wire, frozen=True):
    job_id: str
    execution_id: str
    seq: int
    # What the requester wants of the execution now: "" (carry on), "stop", or "unknown".
    verdict: str = ""
    term: int = 0


class JobAck(_Wire, frozen=True):
    """Compute → primary: a Start/Stop arrived (a lower term is refused with `ok=False`)."""

    job_id: str
    execution_id: str
    ok: bool = True
    seen_term: int = 0


Message = (
    Ping
    | Ack
    | PingReq
    | PushPull
    | Announce
    | RequesterClaim
    | SubmitJob
    | SubmitAck
    | StopJobRequest
    | RequestReply
    | Replicate
    | ReplicateAck
    | FetchJob
    | FetchJobReply
    | Handover
    | HandoverAck
    | AskForBid
    | Bid
    | StartRun
    | StopRun
    | Adopt
    | AdoptReply
    | ExecutionReport
    | ReportAck
    | JobAck
)

_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(Message)
_JOB_FIELDS: Final = msgspec.msgpack.Decoder(dict[str, Any])
_PLACEHOLDER: Final = Job()


def encode(message: Message) -> bytes:
    return _ENCODER.encode(message)


def decode(frame: bytes) -> Message:
    if len(frame) > MAX_MESSAGE_BYTES:
        raise RemoteProtocolError(f"message of {len(frame)} bytes is over the limit")
    try:
        message: Message = _DECODER.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise RemoteProtocolError(f"malformed message: {error}") from None
    return message


def encode_job_record(job: JobRecord) -> bytes:
    return _ENCODER.encode(job)


def decode_job_record(data: bytes) -> JobRecord:
    """A job record from msgpack bytes; the spec goes through the spec reader (see above)."""
    try:
        fields = _JOB_FIELDS.decode(data)
        spec = job_from_document(fields.pop("spec"))
        record = msgspec.convert(fields | {"spec": _PLACEHOLDER}, JobRecord)
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError, TypeError) as error:
        raise RemoteProtocolError(f"malformed job record: {error}") from None
    except SpecError as error:
        raise RemoteProtocolError(f"job record with an invalid spec: {error}") from None
    return replace(record, spec=spec)
