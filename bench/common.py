"""Shared benchmark plumbing: interleaved timings, rows with ratios and targets, JSON, Markdown.

Every figure is a ratio against a baseline measured in the same run. ``compare`` times
the baseline and the candidate alternately (baseline first on even repeats, candidate
first on odd ones), so load from other processes that comes and goes hits both; the
ratio's spread is taken over the per-repeat ratios.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
IMG_DIR = ROOT / "docs" / "img"

# Payload sizes of the benchmarks where size matters (issue 12: 100 B to 32 MiB), and the
# two kinds of content: incompressible bytes and JSON-like text (see ``payload``).
KINDS = ("random", "json")
PAYLOADS: dict[str, int] = {
    "100B": 100,
    "10KiB": 10 * 1024,
    "1MiB": 1024 * 1024,
    "32MiB": 32 * 1024 * 1024,
}


# --------------------------------------------------------------------------- statistics


def quantile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (``q`` in [0, 1]) of a non-empty sequence."""
    data = sorted(samples)
    if not data:
        raise ValueError("no samples")
    if len(data) == 1:
        return float(data[0])
    pos = q * (len(data) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return float(data[lo] + (data[hi] - data[lo]) * (pos - lo))


@dataclass
class Timing:
    """One measured quantity: median and 10th/90th percentile over repeats.

    ``unit`` is ``ns`` (per call) unless said otherwise (``ops/s``, ``ms``, ``round trips``).
    """

    name: str
    median: float
    p10: float
    p90: float
    unit: str = "ns"
    samples: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, name: str, samples: Sequence[float], unit: str = "ns") -> Timing:
        xs = [float(s) for s in samples]
        return cls(name, statistics.median(xs), quantile(xs, 0.1), quantile(xs, 0.9), unit, xs)

    def ratio_to(self, baseline: Timing) -> float:
        return self.median / baseline.median


def _timer(fn: Callable[[], object] | tuple[str, dict[str, Any]]) -> timeit.Timer:
    """A timeit.Timer for a callable, or for ``(statement, globals)`` (no extra call layer).

    timeit turns the garbage collector off while timing, for both sides alike.
    """
    if isinstance(fn, tuple):
        stmt, namespace = fn
        return timeit.Timer(stmt, globals=namespace)
    return timeit.Timer(fn)


def time_per_call(
    name: str,
    fn: Callable[[], object] | tuple[str, dict[str, Any]],
    *,
    number: int,
    repeat: int = 7,
) -> Timing:
    """Nanoseconds per call of ``fn``: median and 10th/90th percentile over ``repeat`` runs."""
    timer = _timer(fn)
    samples = [timer.timeit(number) / number * 1e9 for _ in range(repeat)]
    return Timing.of(name, samples)


@dataclass
class Pair:
    """A baseline and a candidate timed alternately in one run, with per-repeat ratios."""

    baseline: Timing
    candidate: Timing
    ratios: list[float]


def calibrate(timer: timeit.Timer, seconds: float) -> int:
    """How many calls take about ``seconds`` (at least 1)."""
    n = 1
    while True:
        took = timer.timeit(n)
        if took >= seconds / 10 or n >= 10_000_000:
            return max(1, round(n * seconds / max(took, 1e-9)))
        n *= 10


def compare(
    baseline: tuple[str, Callable[[], object] | tuple[str, dict[str, Any]]],
    candidate: tuple[str, Callable[[], object] | tuple[str, dict[str, Any]]],
    *,
    number: int | None,
    repeat: int,
    warmup: int = 1,
    seconds: float = 0.2,
) -> Pair:
    """Time both ``number`` calls per repeat, alternating which goes first.

    ``number=None``: as many calls as the slower side makes in about ``seconds``.
    """
    (bname, bfn), (cname, cfn) = baseline, candidate
    btimer, ctimer = _timer(bfn), _timer(cfn)
    if number is None:
        number = min(calibrate(btimer, seconds), calibrate(ctimer, seconds))
    for _ in range(warmup):
        btimer.timeit(max(1, number // 10))
        ctimer.timeit(max(1, number // 10))
    bs: list[float] = []
    cs: list[float] = []
    for r in range(repeat):
        order = [(btimer, bs), (ctimer, cs)]
        if r % 2:
            order.reverse()
        for timer, out in order:
            out.append(timer.timeit(number) / number * 1e9)
    return Pair(
        Timing.of(bname, bs), Timing.of(cname, cs), [c / b for b, c in zip(bs, cs, strict=True)]
    )


def compare_each(
    baseline: tuple[str, Callable[[], float]],
    candidate: tuple[str, Callable[[], float]],
    *,
    repeat: int,
    warmup: int = 1,
    unit: str = "ns",
) -> Pair:
    """Like :func:`compare` for functions that measure themselves and return the figure."""
    (bname, bfn), (cname, cfn) = baseline, candidate
    for _ in range(warmup):
        bfn()
        cfn()
    bs: list[float] = []
    cs: list[float] = []
    for r in range(repeat):
        order = [(bfn, bs), (cfn, cs)]
        if r % 2:
            order.reverse()
        for fn, out in order:
            gc_was = gc.isenabled()
            gc.disable()
            try:
                out.append(float(fn()))
            finally:
                if gc_was:
                    gc.enable()
    return Pair(
        Timing.of(bname, bs, unit),
        Timing.of(cname, cs, unit),
        [c / b for b, c in zip(bs, cs, strict=True)],
    )


# --------------------------------------------------------------------------- rows


@dataclass
class Row:
    """One line of the summary: candidate against baseline, ratio, target, verdict.

    ``ratio`` is what ``target`` is compared with when ``target_on == "ratio"``; with
    ``target_on == "candidate"`` the target applies to the candidate's median itself
    (e.g. a round-trip count). ``goal`` ``max``: at most the target; ``min``: at least.
    """

    benchmark: str
    case: str
    candidate: Timing
    baseline: Timing
    ratio: float
    ratio_p10: float
    ratio_p90: float
    ratio_label: str = "time ratio"
    target: float | None = None
    goal: str = "max"
    target_on: str = "ratio"
    note: str = ""

    @property
    def checked(self) -> float:
        return self.ratio if self.target_on == "ratio" else self.candidate.median

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "info"
        value = self.checked
        ok = value <= self.target if self.goal == "max" else value >= self.target
        return "ok" if ok else "MISSED"

    def target_text(self) -> str:
        if self.target is None:
            return "—"
        sign = "≤" if self.goal == "max" else "≥"
        what = "x" if self.target_on == "ratio" else f" {self.candidate.unit}"
        return f"{sign} {self.target:g}{what}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdict"] = self.verdict
        data["target_text"] = self.target_text()
        return data


def row_from_pair(
    benchmark: str,
    case: str,
    pair: Pair,
    *,
    target: float | None = None,
    goal: str = "max",
    speedup: bool = False,
    ratio_label: str | None = None,
    note: str = "",
) -> Row:
    """A row whose ratio is candidate/baseline (or baseline/candidate when ``speedup``).

    The ratio is the median of the per-repeat ratios (each repeat times both sides back
    to back), and its spread their 10th..90th percentile.
    """
    ratios = [1.0 / r for r in pair.ratios] if speedup else list(pair.ratios)
    return Row(
        benchmark=benchmark,
        case=case,
        candidate=pair.candidate,
        baseline=pair.baseline,
        ratio=statistics.median(ratios),
        ratio_p10=quantile(ratios, 0.1),
        ratio_p90=quantile(ratios, 0.9),
        ratio_label=ratio_label or ("speed-up" if speedup else "time ratio"),
        target=target,
        goal=goal,
        note=note,
    )


# --------------------------------------------------------------------------- printing


def fmt(value: float, unit: str = "ns") -> str:
    """A human figure: ns/us/ms/s for times, plain numbers otherwise."""
    if unit == "ns":
        if value >= 1e9:
            return f"{value / 1e9:.2f} s"
        if value >= 1e6:
            return f"{value / 1e6:.2f} ms"
        if value >= 1e3:
            return f"{value / 1e3:.1f} µs"
        return f"{value:.0f} ns"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "ops/s":
        return f"{value:,.0f} ops/s"
    if unit == "round trips" or unit == "commands":
        return f"{value:g} {unit}"
    return f"{value:.3g} {unit}"


def spread(t: Timing) -> str:
    return f"{fmt(t.p10, t.unit)} .. {fmt(t.p90, t.unit)}"


def report(title: str, rows: Iterable[Row]) -> list[Row]:
    """Print candidate-vs-baseline rows with ratio, target and verdict; return them."""
    rows = list(rows)
    print(f"\n## {title}", flush=True)
    for row in rows:
        b, c = row.baseline, row.candidate
        print(f"  [{row.case}] {b.name}: {fmt(b.median, b.unit)} ({spread(b)})")
        print(f"  [{row.case}] {c.name}: {fmt(c.median, c.unit)} ({spread(c)})")
        print(
            f"      {row.ratio_label} {row.ratio:.2f}x ({row.ratio_p10:.2f}..{row.ratio_p90:.2f})"
            f"  target {row.target_text()}  {row.verdict}",
            flush=True,
        )
    return rows


# --------------------------------------------------------------------------- environment


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (math.nan, math.nan, math.nan)


def environment() -> dict[str, Any]:
    """What the figures depend on: interpreter, libraries, server, CPU, load."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg": load_average(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    try:
        import redis  # noqa: PLC0415

        info["redis-py"] = redis.__version__
    except ImportError:
        pass
    try:
        import hiredis  # noqa: PLC0415

        info["hiredis"] = hiredis.__version__
    except ImportError:
        info["hiredis"] = None
    try:
        out = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        info["redis-server"] = out.stdout.split()[2].removeprefix("v=") if out.stdout else None
    except (OSError, IndexError, subprocess.TimeoutExpired):
        info["redis-server"] = None
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        info["commit"] = out.stdout.strip() or None
    except OSError:
        info["commit"] = None
    info["library_sha256"] = library_digest()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def library_digest() -> str:
    """SHA-256 over ``redis_cache/**/*.py`` as measured (the tree may be uncommitted)."""
    import hashlib  # noqa: PLC0415

    digest = hashlib.sha256()
    for path in sorted((ROOT / "redis_cache").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def save(name: str, data: object, out_dir: Path | None = None) -> Path:
    """Write ``{"name", "environment", "data"}`` to ``<out_dir>/<name>.json``."""
    directory = Path(out_dir) if out_dir is not None else RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    payload = {"name": name, "pid": os.getpid(), "environment": environment(), "data": data}
    path.write_text(json.dumps(payload, indent=2, default=_json_default))
    return path


def _json_default(obj: object) -> object:
    if isinstance(obj, Row):
        return obj.to_json()
    if isinstance(obj, Timing):
        return asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def rows_json(rows: Iterable[Row]) -> list[dict[str, Any]]:
    return [row.to_json() for row in rows]


# --------------------------------------------------------------------------- payloads


def payload(size: int, kind: str = "random", seed: int = 0) -> bytes:
    """``size`` bytes: ``random`` (incompressible) or ``json`` (JSON-like text, the shape
    of compile metadata and generated source, which zlib shrinks about 4-6x)."""
    if kind == "random":
        return os.urandom(size)
    if kind != "json":
        raise ValueError(f"unknown payload kind {kind!r}")
    import random  # noqa: PLC0415

    rng = random.Random(seed)
    parts: list[str] = []
    length = 0
    i = 0
    while length < size:
        line = (
            f'{{"kernel": "triton_red_fused_add_mul_{rng.randrange(10_000)}", '
            f'"num_warps": {rng.choice((2, 4, 8))}, "num_stages": {rng.randrange(1, 6)}, '
            f'"block": [{rng.choice((16, 32, 64, 128))}, {rng.choice((16, 32, 64))}], '
            f'"time_ms": {rng.random() * 10:.5f}, "id": {i}}},\n'
        )
        parts.append(line)
        length += len(line)
        i += 1
    return "".join(parts).encode()[:size]


# --------------------------------------------------------------------------- the library

# The benchmarks reach the library only through its public API (fcache/dcache/icache,
# FastCache/DeterministicCache(settings), record/get/insert/get_many/close/stats) and,
# where a layer must be reached directly, through ``CacheInterface.entry_key`` and
# ``CacheInterface._runtime()`` (``.memo``, ``.disk``, ``.redis``, ``.codec``, ``.policy``)
# with the layers' own contract (``get``, ``insert``, ``discard``, ``clear``).


def forget(cache: Any) -> None:
    """Empty the cache's in-process memo (and with it every fast index into it)."""
    cache._runtime().memo.clear()


def landed_on_disk(
    cache: Any, fn: Callable[..., Any], params: Iterable[Any], timeout: float = 60.0
) -> bool:
    """Wait (bounded) until the entry of every ``params`` is on ``cache``'s disk.

    Backfills and the disk copies of inserts are written off the caller's path; waiting
    for them between timed blocks keeps one side's background work out of the other
    side's timing. Returns whether they all landed.
    """
    disk = cache._runtime().disk
    pending = [cache.entry_key(fn, p) for p in params]
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pending = [k for k in pending if disk.get(k) is None]
        if pending:
            time.sleep(0.002)
    return not pending


def in_child(code: str, *, env: dict[str, str] | None = None, cwd: Path = ROOT) -> float:
    """Run ``code`` in a fresh interpreter (cwd: the repository); return the number it prints."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"child exited {done.returncode}: {done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any ``REDIS_CACHE_*`` variable, plus ``extra``.

    ``PYTHONDONTWRITEBYTECODE`` goes too: with it, a fresh interpreter compiles every
    module of the package from source on each import (19 ms of a 49 ms import here),
    which no installed worker does (pip writes the bytecode at install time).
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("REDIS_CACHE_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    env.update(extra)
    return env


@dataclass
class Options:
    """What every benchmark module's ``run`` receives."""

    quick: bool = False
    out: Path = RESULTS_DIR
    img: Path = IMG_DIR

    def n(self, full: int, quick: int) -> int:
        """A repeat or iteration count: ``full`` normally, ``quick`` with ``--quick``."""
        return quick if self.quick else full


def command_line(run: Callable[[Options], object], doc: str | None) -> None:
    """The command line every benchmark module shares: ``--quick`` and ``--out``."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Options().out)
    args = parser.parse_args()
    run(Options(quick=args.quick, out=args.out))
