"""Retry, restart and queueing policy: node defaults, overridable per job through Meta.

Defaults (and the Meta keys that override them for one job):

| setting | default | Meta key |
|---|---|---|
| batch retries after a failed execution | 3 | `meshnode.io/max-retries` |
| first retry delay, doubling after each failure | 1 s | `meshnode.io/retry-backoff` |
| longest retry delay | 60 s | `meshnode.io/retry-backoff-max` |
| first daemon/service restart delay, doubling | 1 s | `meshnode.io/restart-backoff` |
| longest restart delay | 300 s | `meshnode.io/restart-backoff-max` |
| a run this long resets the restart delay | 60 s | `meshnode.io/restart-stable-after` |
| wait for an unreachable node running a batch job | 300 s | `meshnode.io/lost-node-grace` |

Durations in Meta are seconds (`"2.5"`) or Go-style (`"500ms"`, `"2m"`, `"1h"`).
"""

from __future__ import annotations

import re
from typing import Final

import msgspec
from msgspec.structs import replace

from meshnode.spec import Job

__all__ = ["META_KEYS", "Policy", "policy_for"]


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    max_retries: int = 3
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 60.0
    restart_backoff_s: float = 1.0
    restart_backoff_max_s: float = 300.0
    restart_stable_after_s: float = 60.0
    # Used when a job's QueueTimeout is 0.
    default_queue_timeout_s: float = 0.0
    # An edge node cut off may still finish its batch run and report it when it is back:
    # when no other node can take the work, the job waits this long before failing.
    lost_node_grace_s: float = 300.0

    def retry_delay_s(self, failures: int) -> float:
        """Delay before the retry that follows `failures` failed executions (≥ 1)."""
        return _backoff(self.retry_backoff_s, self.retry_backoff_max_s, failures)

    def restart_delay_s(self, short_runs: int) -> float:
        """Delay before restarting after `short_runs` consecutive runs that ended early."""
        if short_runs == 0:
            return 0.0
        return _backoff(self.restart_backoff_s, self.restart_backoff_max_s, short_runs)


def _backoff(base: float, ceiling: float, attempt: int) -> float:
    return float(min(ceiling, base * 2 ** min(attempt - 1, 62)))


META_KEYS: Final = {
    "meshnode.io/max-retries": "max_retries",
    "meshnode.io/retry-backoff": "retry_backoff_s",
    "meshnode.io/retry-backoff-max": "retry_backoff_max_s",
    "meshnode.io/restart-backoff": "restart_backoff_s",
    "meshnode.io/restart-backoff-max": "restart_backoff_max_s",
    "meshnode.io/restart-stable-after": "restart_stable_after_s",
    "meshnode.io/lost-node-grace": "lost_node_grace_s",
}
_DURATION: Final = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<unit>ms|s|m|h)?")
_UNIT_S: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_MAX_RETRIES: Final = 1000
_MAX_DURATION_S: Final = 7 * 24 * 3600.0


def policy_for(job: Job, defaults: Policy) -> tuple[Policy, list[str]]:
    """The job's policy and a warning for each Meta override that could not be used."""
    overrides: dict[str, float | int] = {}
    warnings = []
    for key, value in job.meta.items():
        field = META_KEYS.get(key.lower())
        if field is None:
            continue
        parsed = _parse(field, value.strip())
        if parsed is None:
            warnings.append(f'Meta["{key}"]: {value!r} is not usable; using the node default')
        else:
            overrides[field] = parsed
    return replace(defaults, **overrides), warnings


def _parse(field: str, text: str) -> float | int | None:
    if field == "max_retries":
        if text.isascii() and text.isdigit() and int(text) <= _MAX_RETRIES:
            return int(text)
        return None
    match = _DURATION.fullmatch(text)
    if match is None:
        return None
    seconds = float(match["number"]) * _UNIT_S[match["unit"]]
    return seconds if seconds <= _MAX_DURATION_S else None
