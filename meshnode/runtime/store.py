"""The node's state in SQLite (WAL): jobs, executions and their history (as requester), the
node's own runs (as compute node), and operators' approval decisions.

Rules of this module:
- One writer: the node's core loop applies each `Persist` command in one transaction, before
  the commands that follow it are acted on. Readers (the API) use the same connection from the
  same trio thread, so there is no locking to get wrong.
- `synchronous=NORMAL` in WAL mode: a committed transaction survives the process being killed
  (kill -9); only an OS crash or power loss can drop the last ones.
- Records are stored whole (msgpack of the core's Structs) beside the few columns that queries
  filter and sort on. History is bounded per job (a daemon restarting for a year must not
  fill the disk): the oldest events beyond `HISTORY_PER_JOB` are dropped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import msgspec

from meshnode.core.commands import Persist
from meshnode.core.messages import Approval, decode_job_record
from meshnode.core.records import ExecutionRecord, HistoryEvent, JobRecord, LocalRun
from meshnode.errors import MeshnodeError

__all__ = ["HISTORY_PER_JOB", "AmbiguousIdError", "NotFoundError", "Store"]

SCHEMA_VERSION: Final = 1
HISTORY_PER_JOB: Final = 1000

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    terminal INTEGER NOT NULL,
    created_at REAL NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs (created_at, id);
CREATE INDEX IF NOT EXISTS jobs_live ON jobs (terminal);
CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS executions_by_job ON executions (job_id, created_at);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    record BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS approvals (
    node_id TEXT PRIMARY KEY,
    record BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_job ON history (job_id, seq);
"""


class NotFoundError(MeshnodeError):
    """No job (or execution) has that id."""


class AmbiguousIdError(MeshnodeError):
    """A short id prefix matches more than one job."""


class Store:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._db.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )
        self._job_encoder = msgspec.msgpack.Encoder()
        self._execution_decoder = msgspec.msgpack.Decoder(ExecutionRecord)
        self._history_decoder = msgspec.msgpack.Decoder(HistoryEvent)
        self._run_decoder = msgspec.msgpack.Decoder(LocalRun)
        self._approval_decoder = msgspec.msgpack.Decoder(Approval)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- writes --------------------------------------------------------------------------------

    def apply(self, persist: Persist) -> None:
        encode = self._job_encoder.encode
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO jobs (id, state, terminal, created_at, record) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET state = excluded.state,"
                " terminal = excluded.terminal, record = excluded.record",
                [
                    (job.id, job.state.value, job.state.terminal, job.created_at, encode(job))
                    for job in persist.jobs
                ],
            )
            db.executemany(
                "INSERT INTO executions (id, job_id, created_at, record) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                [(e.id, e.job_id, e.created_at, encode(e)) for e in persist.executions],
            )
            db.executemany(
                "INSERT INTO history (job_id, record) VALUES (?, ?)",
                [(event.job_id, encode(event)) for event in persist.history],
            )
            db.executemany(
                "INSERT INTO runs (id, job_id, record) VALUES (?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                [(run.id, run.job_id, encode(run)) for run in persist.runs],
            )
            db.executemany(
                "DELETE FROM runs WHERE id = ?", [(run_id,) for run_id in persist.deleted_runs]
            )
            db.executemany(
                "INSERT INTO approvals (node_id, record) VALUES (?, ?)"
                " ON CONFLICT (node_id) DO UPDATE SET record = excluded.record",
                [(a.node_id, encode(a)) for a in persist.approvals],
            )
            for job_id in {event.job_id for event in persist.history}:
                db.execute(
                    "DELETE FROM history WHERE job_id = ? AND seq <= (SELECT seq FROM history"
                    " WHERE job_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                    (job_id, job_id, HISTORY_PER_JOB),
                )

    # --- reads -----------------------------------------------------------------------------

    def live_state(self) -> tuple[list[JobRecord], list[ExecutionRecord]]:
        """Jobs that are not terminal, and their executions: what the core restarts with."""
        jobs = [
            decode_job_record(row[0])
            for row in self._db.execute("SELECT record FROM jobs WHERE terminal = 0")
        ]
        ids = [job.id for job in jobs]
        executions = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            executions.extend(
                self._execution_decoder.decode(row[0])
                for row in self._db.execute(
                    f"SELECT record FROM executions WHERE job_id IN ({marks})",
                    chunk,
                )
            )
        return jobs, executions

    def runs(self) -> list[LocalRun]:
        """This node's own runs not yet fully reported: what its compute side restarts with."""
        return [
            self._run_decoder.decode(row[0]) for row in self._db.execute("SELECT record FROM runs")
        ]

    def approvals(self) -> list[Approval]:
        return [
            self._approval_decoder.decode(row[0])
            for row in self._db.execute("SELECT record FROM approvals")
        ]

    def job(self, job_id_or_prefix: str) -> JobRecord:
        """A job by id, or by a unique prefix of its id (with or without the `j-`)."""
        row = self._db.execute(
            "SELECT record FROM jobs WHERE id = ?", (job_id_or_prefix,)
        ).fetchone()
        if row is not None:
            return decode_job_record(row[0])
        prefix = job_id_or_prefix if job_id_or_prefix.startswith("j-") else "j-" + job_id_or_prefix
        rows = self._db.execute(
            "SELECT id, record FROM jobs WHERE id >= ? AND id < ? ORDER BY id LIMIT 6",
            (prefix, prefix + "\U0010ffff"),
        ).fetchall()
        if not rows or not job_id_or_prefix:
            raise NotFoundError(f"no job with id {job_id_or_prefix!r}")
        if len(rows) > 1:
            shown = ", ".join(row[0] for row in rows[:5])
            raise AmbiguousIdError(
                f"job id {job_id_or_prefix!r} is ambiguous: it starts {shown}"
                + (", …" if len(rows) > 5 else "")
            )
        return decode_job_record(rows[0][1])

    def jobs_page(
        self, *, after: tuple[float, str] | None, limit: int, newest_first: bool
    ) -> list[JobRecord]:
        """Jobs in creation order, `limit` of them after the cursor (created_at, id)."""
        order = "DESC" if newest_first else "ASC"
        compare = "<" if newest_first else ">"
        if after is None:
            rows = self._db.execute(
                f"SELECT record FROM jobs ORDER BY created_at {order}, id {order} LIMIT ?",
                (limit,),
            )
        else:
            rows = self._db.execute(
                f"SELECT record FROM jobs WHERE (created_at, id) {compare} (?, ?)"
                f" ORDER BY created_at {order}, id {order} LIMIT ?",
                (after[0], after[1], limit),
            )
        return [decode_job_record(row[0]) for row in rows]

    def executions_of(self, job_id: str) -> list[ExecutionRecord]:
        return [
            self._execution_decoder.decode(row[0])
            for row in self._db.execute(
                "SELECT record FROM executions WHERE job_id = ? ORDER BY created_at, id",
                (job_id,),
            )
        ]

    def execution(self, execution_id: str) -> ExecutionRecord:
        row = self._db.execute(
            "SELECT record FROM executions WHERE id = ?", (execution_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no execution with id {execution_id!r}")
        return self._execution_decoder.decode(row[0])

    def history_of(self, job_id: str) -> list[HistoryEvent]:
        return [
            self._history_decoder.decode(row[0])
            for row in self._db.execute(
                "SELECT record FROM history WHERE job_id = ? ORDER BY seq", (job_id,)
            )
        ]
