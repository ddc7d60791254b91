"""Template rendering speed, beside a plain `str.replace` pass over the same text.

Usage: .venv/bin/python benchmarks/template_render.py

A 10 KB spec with 50 actions (target: well under 5 ms) and a 3 MB spec with 15,000 actions.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from meshnode.spec import render_template

LINE = '        - --flag-%d\n          - {{or (index . "k%d") "none"}} some filler text\n'


def spec(actions: int, size: int) -> str:
    text = "".join(LINE % (i, i) for i in range(actions))
    return text + "#" * (size - len(text))


def median_ms(action: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    print(f"{'case':28} {'render ms':>10} {'str.replace ms (baseline)':>26}")
    for name, text, runs in (
        ("10 KB, 50 actions", spec(50, 10 * 1024), 50),
        ("3 MB, 15,000 actions", spec(50, 10 * 1024) * 300, 3),
    ):
        render = median_ms(lambda text=text: render_template(text, {"k7": "seven"}), runs)
        baseline = median_ms(lambda text=text: text.replace("{{", "[[").replace("}}", "]]"), runs)
        print(f"{name:28} {render:10.2f} {baseline:26.2f}")


if __name__ == "__main__":
    main()
