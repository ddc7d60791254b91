"""CLI start-up time, beside the bare interpreter in the same run.

Usage: .venv/bin/python benchmarks/cli_startup.py [--runs N]

Prints median and 90th percentile wall time of: the bare interpreter (`python -c pass`, the
floor no Python CLI can beat), `meshnode --help`, and `meshnode job validate` of one example.
Target (issue 2): the CLI starts in under 300 ms.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def wall_times_ms(command: list[str], runs: int) -> list[float]:
    subprocess.run(command, capture_output=True, check=True)  # warm the page cache
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs
    meshnode = shutil.which("meshnode", path=str(Path(sys.executable).parent))
    if meshnode is None:
        sys.exit("meshnode is not installed next to this Python: run scripts/quickstart first")
    cases = {
        "python -c pass (baseline)": [sys.executable, "-c", "pass"],
        "meshnode --help": [meshnode, "--help"],
        "meshnode job validate (1 spec)": [
            meshnode, "job", "validate", str(REPO / "examples" / "batch-docker.yaml")
        ],
    }  # fmt: skip
    print(f"{'command':34} {'median ms':>10} {'p90 ms':>8}   ({runs} runs each)")
    for name, command in cases.items():
        times = sorted(wall_times_ms(command, runs))
        p90 = times[min(len(times) - 1, int(len(times) * 0.9))]
        print(f"{name:34} {statistics.median(times):10.1f} {p90:8.1f}")


if __name__ == "__main__":
    main()
