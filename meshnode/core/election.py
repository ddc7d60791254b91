"""Who is the requester of a job: rendezvous (highest random weight) hashing.

Rules of this module: every node that sees the same candidates computes the same ranking for
a job, with no coordination; adding or removing one node moves only the jobs that ranked it
first. The primary is the top-ranked candidate; the next `replicas - 1` hold copies.
Terms (fencing) are the node core's business, not this module's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["rank", "replica_set"]


def _weight(job_id: str, node_id: str) -> bytes:
    return hashlib.blake2b(f"{job_id}\x00{node_id}".encode(), digest_size=16).digest()


def rank(job_id: str, candidates: Iterable[str]) -> list[str]:
    """Candidates best first for this job."""
    return sorted(set(candidates), key=lambda node: _weight(job_id, node), reverse=True)


def replica_set(job_id: str, candidates: Iterable[str], replicas: int) -> list[str]:
    """The primary first, then the replicas: the top `replicas` of the ranking."""
    return rank(job_id, candidates)[:replicas]
