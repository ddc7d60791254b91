"""What the job commands do against a node: submit, wait, follow logs, download results.

Rules of this module:
- Every function takes the `ApiClient` and the `Console` it uses; nothing is global.
- Waiting is polling `GET /api/v1/orchestrator/jobs/{id}` with a growing interval (a quarter
  of a second up to one second) and an optional overall limit; a batch or ops job is waited
  for until it ends, a daemon or service job until it runs (it is not meant to end).
- `--follow` streams one execution's logs at a time (`execution_id=`), so every execution's
  output appears once, in full, whatever the node does when several run at once.
- While following, the job's output owns standard output: status lines go to standard error.
- Results are downloaded to a file next to their destination, checked, then extracted
  (`archive.extract_archive`); the download is deleted whatever happens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from meshnode.cli.client import ApiClient, ApiError, path_of
from meshnode.cli.output import (
    Console,
    execution_state_name,
    job_state_name,
    print_data,
    short_id,
    state_message,
)
from meshnode.cli.views import TERMINAL_JOB_STATES, field, items_of, progress_text
from meshnode.errors import MeshnodeError

__all__ = [
    "JOBS_PATH",
    "RunOptions",
    "WaitTimeoutError",
    "download_results",
    "get_job",
    "print_logs",
    "run_submitted_job",
    "submit_job",
    "wait_for_job",
]

JOBS_PATH: Final = "/api/v1/orchestrator/jobs"
EXECUTIONS_PATH: Final = "/api/v1/executions"
FIRST_POLL_S: Final = 0.25
LONGEST_POLL_S: Final = 1.0
# Executions whose logs exist: accepted (running or about to) or ended.
STARTED_EXECUTION_STATES: Final = frozenset({5, 7, 8, 9})
COMPLETED_EXECUTION: Final = 7
LONG_RUNNING_TYPES: Final = frozenset({"daemon", "service"})
EXIT_FAILED: Final = 1
EXIT_INTERRUPTED: Final = 130

Clock = Callable[[], float]
Sleep = Callable[[float], None]


class WaitTimeoutError(MeshnodeError):
    """The job did not reach the awaited state in time (it keeps going on the node)."""


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How `job run`, `docker run` and `wasm run` behave after submitting."""

    wait: bool = True
    follow: bool = False
    id_only: bool = False
    output: str | None = None  # json | yaml | None (human)
    wait_timeout_s: float | None = None


# --- requests ----------------------------------------------------------------------------------


def submit_job(client: ApiClient, spec_json: str) -> dict[str, Any]:
    """PUT the spec (Bacalhau's `{"Job": …}` request); returns the PutJob response."""
    body = ('{"Job": ' + spec_json + "}").encode()
    response = client.put(JOBS_PATH, body)
    if not isinstance(response, dict) or not field(response, "JobID"):
        raise ApiError(f"the node accepted the job but sent no JobID: {response!r:.200}")
    return response


def get_job(client: ApiClient, job_id: str) -> dict[str, Any]:
    """The job with its executions (`include=executions`, fetched apart if not included)."""
    response = client.get(path_of(JOBS_PATH, job_id), {"include": "executions"})
    if not isinstance(response, dict) or not isinstance(field(response, "Job"), dict):
        raise ApiError(f"the node's answer for job {job_id} has no Job: {response!r:.200}")
    if field(response, "Executions") is None:
        full_id = str(field(field(response, "Job"), "ID", default=job_id))
        response["Executions"] = client.get(path_of(JOBS_PATH, full_id) + "/executions")
    return response


def executions_of(response: object) -> list[Any]:
    """A GetJob response's executions: Bacalhau nests them as {Items, NextToken}."""
    executions = field(response, "Executions")
    if isinstance(executions, list):
        return executions
    return items_of(executions)


# --- run: submit, then wait or follow -----------------------------------------------------------


def run_submitted_job(
    client: ApiClient,
    console: Console,
    spec_json: str,
    *,
    job_type: str,
    options: RunOptions,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> int:
    """Submit and do what the options say; returns the exit code (1 when the job failed)."""
    submitted = submit_job(client, spec_json)
    job_id = str(field(submitted, "JobID"))
    for warning in field(submitted, "Warnings", default=None) or ():
        console.error(f"Warning: {warning}")
    # While logs own stdout, the "submitted" line goes to stderr.
    announce = console.error if options.follow else console.print
    if options.id_only:
        console.print(job_id)
    elif options.output is None:
        announce(f"Job {job_id} submitted")
    if not options.wait and not options.follow:
        if options.id_only:
            pass  # the id is all a script asked for
        elif options.output is not None:
            print_data(console, submitted, options.output)
        else:
            _hints(console, job_id, ended=False)
        return 0
    try:
        if options.follow:
            response = follow_job(
                client, console, job_id, options=options, clock=clock, sleep=sleep
            )
        else:
            response = wait_for_job(
                client,
                console,
                job_id,
                until_running=job_type in LONG_RUNNING_TYPES,
                show_progress=not options.id_only,
                wait_timeout_s=options.wait_timeout_s,
                clock=clock,
                sleep=sleep,
            )
    except KeyboardInterrupt:
        # Ctrl-C stops the waiting, not the job: say so, and how to find it again.
        console.clear_status()
        console.error(f"\nStopped waiting; job {job_id} keeps going on the node.")
        _hints(console, job_id, ended=False)
        raise SystemExit(EXIT_INTERRUPTED) from None
    job = field(response, "Job")
    state = job_state_name(field(job, "State"))
    if options.id_only:
        pass  # the exit code says how it ended
    elif options.output is not None:
        print_data(console, response, options.output)
    else:
        report = console.error if options.follow else console.print
        report(f"Job {job_id} {state}")
        for line in _failure_details(response):
            report(line)
        _hints(console, job_id, ended=state in TERMINAL_JOB_STATES)
    return EXIT_FAILED if state == "Failed" else 0


def wait_for_job(
    client: ApiClient,
    console: Console,
    job_id: str,
    *,
    until_running: bool,
    show_progress: bool,
    wait_timeout_s: float | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> dict[str, Any]:
    """Poll until the job ends (or runs, for daemon/service jobs); returns the last GetJob."""
    started = clock()
    interval = FIRST_POLL_S
    last_line = ""
    while True:
        response = get_job(client, job_id)
        job = field(response, "Job")
        state = job_state_name(field(job, "State"))
        if state in TERMINAL_JOB_STATES or (until_running and state == "Running"):
            console.clear_status()
            return response
        elapsed = clock() - started
        if show_progress:
            line = progress_text(
                job,
                executions_of(response),
                elapsed_s=elapsed if console.err_terminal else None,
            )
            if line != last_line:
                console.status(line)
                last_line = line
        if wait_timeout_s is not None and elapsed >= wait_timeout_s:
            console.clear_status()
            raise WaitTimeoutError(
                f"job {job_id} is still {state} after {wait_timeout_s:g} s; it keeps going "
                f"on the node (see: meshnode job describe {short_id(job_id)})"
            )
        sleep(interval)
        interval = min(LONGEST_POLL_S, interval * 1.5)


def follow_job(
    client: ApiClient,
    console: Console,
    job_id: str,
    *,
    options: RunOptions,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> dict[str, Any]:
    """Stream each execution's logs as it starts, until the job ends; returns the last
    GetJob response."""
    followed: set[str] = set()
    started = clock()
    interval = FIRST_POLL_S
    while True:
        response = get_job(client, job_id)
        state = job_state_name(field(field(response, "Job"), "State"))
        ended = state in TERMINAL_JOB_STATES
        for execution in executions_of(response):
            execution_id = str(field(execution, "ID", default=""))
            compute = field(field(execution, "ComputeState"), "StateType")
            if execution_id in followed or compute not in STARTED_EXECUTION_STATES:
                continue
            followed.add(execution_id)
            live = compute == 5 and not ended
            try:
                print_logs(client, console, job_id, execution_id=execution_id, follow=live)
            except ApiError as error:
                if error.status != 404:
                    raise
                # An execution that failed before it ran (an image missing) has no logs.
            interval = FIRST_POLL_S
            break  # re-read the job: more executions may have started meanwhile
        else:
            if ended:
                return response
            if options.wait_timeout_s is not None and clock() - started >= options.wait_timeout_s:
                raise WaitTimeoutError(
                    f"job {job_id} is still {state} after {options.wait_timeout_s:g} s; "
                    "it keeps going on the node"
                )
            sleep(interval)
            interval = min(LONGEST_POLL_S, interval * 1.5)


def print_logs(
    client: ApiClient,
    console: Console,
    job_id: str,
    *,
    execution_id: str | None = None,
    follow: bool = False,
    raw: bool = False,
) -> None:
    """Write log records as they arrive: stdout lines to stdout, stderr lines to stderr
    (`raw`: each record as one JSON line, for --output json)."""
    import json  # only --output json needs it

    params = {"follow": follow, "execution_id": execution_id or None}
    path = path_of(JOBS_PATH, job_id) + "/logs"
    for record in client.json_lines(path, params, read_timeout_s=None if follow else 60.0):
        if raw:
            console.print(json.dumps(record, ensure_ascii=False))
            continue
        line = str(field(record, "Line", default="") or "")
        if not line.endswith("\n"):
            line += "\n"
        stream = console.err if field(record, "Type") == "stderr" else console.out
        console.clear_status()
        stream.write(line)
        stream.flush()


def _failure_details(response: object) -> list[str]:
    """Why a job failed, in the job's and its executions' words."""
    job = field(response, "Job")
    if job_state_name(field(job, "State")) != "Failed":
        return []
    lines = []
    message = state_message(field(job, "State"))
    if message:
        lines.append(f"  {message}")
    for execution in executions_of(response):
        compute = field(execution, "ComputeState")
        run_output = field(execution, "RunOutput")
        reason = state_message(compute) or str(field(run_output, "ErrorMsg", default="") or "")
        name = execution_state_name(compute)
        if name == "Failed" or reason:
            execution_id = short_id(str(field(execution, "ID", default="")))
            lines.append(f"  execution {execution_id} {name}: {reason or 'no message'}")
    return lines


def _hints(console: Console, job_id: str, *, ended: bool) -> None:
    short = short_id(job_id)
    console.error(f"  meshnode job describe {short}")
    console.error(f"  meshnode job logs {short}" + ("" if ended else " --follow"))
    if ended:
        console.error(f"  meshnode job get {short}")


# --- get: download results ----------------------------------------------------------------------


def download_results(
    client: ApiClient, console: Console, job_id: str, output_dir: Path | None, *, cwd: Path
) -> Path:
    """Download and extract every completed execution's results into one folder per
    execution; returns the folder. Raises when there is nothing to download."""
    response = get_job(client, job_id)
    full_id = str(field(field(response, "Job"), "ID", default=job_id))
    completed = [
        execution
        for execution in executions_of(response)
        if field(field(execution, "ComputeState"), "StateType") == COMPLETED_EXECUTION
    ]
    if not completed:
        state = job_state_name(field(field(response, "Job"), "State"))
        raise MeshnodeError(
            f"job {full_id} has no completed execution: no results to download (job {state})"
        )
    folder = output_dir if output_dir is not None else cwd / f"job-{short_id(full_id)}"
    # The node that ran each execution has its files: `node` lets any node route there.
    targets = [
        (str(field(e, "ID")), str(field(e, "NodeID", default="")), folder / str(field(e, "ID")))
        for e in completed
    ]
    for _, _, target in targets:
        if target.exists() and any(target.iterdir()):
            raise MeshnodeError(f"{target} already exists and is not empty: not overwriting it")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MeshnodeError(f"cannot create {folder}: {error.strerror or error}") from None
    try:
        downloaded = _download_each(client, console, folder, targets)
    finally:
        if created and not any(folder.iterdir()):
            folder.rmdir()  # a failed first download leaves no empty folder behind
    if not downloaded:
        raise MeshnodeError(f"job {full_id}: no execution has results to download")
    return folder


def _download_each(
    client: ApiClient,
    console: Console,
    folder: Path,
    targets: Sequence[tuple[str, str, Path]],
) -> int:
    from meshnode.cli.archive import extract_archive  # tarfile is only needed here

    downloaded = 0
    for execution_id, node_id, target in targets:
        part = folder / f".{execution_id}.tar.gz.part"
        path = path_of(EXECUTIONS_PATH, execution_id) + "/results"
        if node_id:
            path += f"?node={quote(node_id, safe='')}"
        try:
            with open(part, "wb") as sink:
                size = client.download(path, sink)
            if size == 0:
                raise MeshnodeError(
                    f"the node sent an empty results archive for execution {execution_id}"
                )
            files = extract_archive(part, target)
        except ApiError as error:
            if error.status != 404:
                raise
            console.error(f"Warning: execution {execution_id} has no results: {error.message}")
            continue
        except OSError as error:
            raise MeshnodeError(f"cannot write {part}: {error.strerror or error}") from None
        finally:
            part.unlink(missing_ok=True)
        downloaded += 1
        plural = "" if len(files) == 1 else "s"
        console.print(f"{short_id(execution_id)}: {len(files)} file{plural} in {target}")
    return downloaded


def fetch_all_pages(
    client: ApiClient,
    path: str,
    params: dict[str, object],
    *,
    keys: Sequence[str] = ("Items",),
    max_items: int = 10_000,
) -> list[Any]:
    """Follow NextToken until the end (or `max_items`: a bound on a runaway listing)."""
    items: list[Any] = []
    token: str | None = None
    while True:
        response = client.get(path, {**params, "next_token": token})
        items.extend(items_of(response, *keys))
        token = field(response, "NextToken") or None
        if not token or len(items) >= max_items:
            return items[:max_items]
