"""Shared benchmark plumbing: repeat a timing, report median and spread, print ratios."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"


@dataclass
class Timing:
    name: str
    median_ns: float
    p10_ns: float
    p90_ns: float

    def ratio_to(self, baseline: Timing) -> float:
        return self.median_ns / baseline.median_ns


def time_per_call(name: str, fn: Callable[[], object], *, number: int, repeat: int = 7) -> Timing:
    """Nanoseconds per call of ``fn``: median and 10th/90th percentile over ``repeat`` runs."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter_ns() - start) / number)
    samples.sort()
    deciles = statistics.quantiles(samples, n=10) if len(samples) > 1 else samples * 9
    return Timing(name, statistics.median(samples), deciles[0], deciles[-1])


def report(title: str, rows: list[tuple[Timing, Timing, float | None]]) -> list[dict[str, object]]:
    """Print ``candidate vs baseline`` rows with the ratio and the target, if any."""
    print(f"\n## {title}")
    print(f"{'measurement':<44} {'median':>12} {'p10..p90':>22} {'ratio':>7} {'target':>7}")
    out = []
    for candidate, baseline, target in rows:
        ratio = candidate.ratio_to(baseline)
        for t in (baseline, candidate):
            spread = f"{_fmt(t.p10_ns)}..{_fmt(t.p90_ns)}"
            print(f"{t.name:<44} {_fmt(t.median_ns):>12} {spread:>22}", end="")
            if t is candidate:
                verdict = "" if target is None else ("ok" if ratio <= target else "MISSED")
                print(
                    f" {ratio:>6.2f}x {_target(target):>7} {verdict}"
                )
            else:
                print()
        out.append(
            {
                "candidate": asdict(candidate),
                "baseline": asdict(baseline),
                "ratio": ratio,
                "target": target,
            }
        )
    return out


def _target(target: float | None) -> str:
    return f"<={target:g}x" if target else ""


def _fmt(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.1f} us"
    return f"{ns:.0f} ns"


def save(name: str, data: object) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"pid": os.getpid(), "data": data}, indent=2))
    return path
