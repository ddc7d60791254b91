"""The node's state in SQLite (WAL): jobs, executions and their history.

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
from typing import Any, Final

import msgspec
from msgspec.structs import replace

from meshnode.core.node import Persist
from meshnode.core.records import ExecutionRecord, HistoryEvent, JobRecord
from meshnode.errors import MeshnodeError
from meshnode.spec import Job, job_from_document

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
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_job ON history (job_id, seq);
"""


class _JobRecordDecoder:
    """msgspec cannot decode a spec by itself: which Params struct an engine, source or
    publisher has depends on the sibling `Type` field. The spec goes through the spec reader
    (which knows that rule, and is idempotent on a normalized spec); the rest through msgspec."""

    def __init__(self) -> None:
        self._raw = msgspec.msgpack.Decoder(dict[str, Any])

    def decode(self, data: bytes) -> JobRecord:
        fields = self._raw.decode(data)
        spec = job_from_document(fields.pop("spec"))
        return replace(msgspec.convert(fields | {"spec": _PLACEHOLDER}, JobRecord), spec=spec)


_PLACEHOLDER: Final = Job()


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
        self._job_decoder = _JobRecordDecoder()
        self._execution_decoder = msgspec.msgpack.Decoder(ExecutionRecord)
        self._history_decoder = msgspec.msgpack.Decoder(HistoryEvent)

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
            self._job_decoder.decode(row[0])
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

    def job(self, job_id_or_prefix: str) -> JobRecord:
        """A job by id, or by a unique prefix of its id (with or without the `j-`)."""
        row = self._db.execute(
            "SELECT record FROM jobs WHERE id = ?", (job_id_or_prefix,)
        ).fetchone()
        if row is not None:
            return self._job_decoder.decode(row[0])
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
        return self._job_decoder.decode(rows[0][1])

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
        return [self._job_decoder.decode(row[0]) for row in rows]

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
