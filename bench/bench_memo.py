"""Memo hits for every argument shape against ``functools.lru_cache(typed=True)``.

    python -m bench.bench_memo [--quick] [--out bench/results]

1. A memo hit through ``fcache.record`` and through ``fcache.get`` (the same entry,
   reached by the function's shared index), each against an ``lru_cache(typed=True)``
   hit on the same function and arguments, for every shape of :data:`SHAPES`.
   Targets (issue 12): record <= 2x, get <= 3x. For the dict argument, which
   ``lru_cache`` cannot hash, the baseline converts it as a user would:
   ``f(tuple(sorted(d.items())))``, conversion included.

Both sides are timed as bare statements (``f('matmul', 4)``), alternately, repeat by
repeat (``bench.common.compare``), so no benchmark wrapper dilutes the ratio.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Options, Row, command_line, compare, report, row_from_pair, save
from bench.kernels import kernel


@dataclass(frozen=True)
class Shape:
    """One argument shape: how it is called, and how ``lru_cache`` is called instead."""

    call: str  # a statement calling ``f`` with names from ``values``
    values: dict[str, Any]
    args: tuple[Any, ...]  # the same call as ``get`` params
    kwargs: dict[str, Any]
    lru_call: str | None = None  # the baseline's statement when it differs


# The argument objects, shared by each shape's statement and its ``get`` params: a call
# with the very objects of an earlier call lets both caches compare keys by identity.
_SHAPE = (64, 128, 256)
_LAYOUT, _META = ((64, 128), (128, 256)), ("float16", (1, 1))
_CFG = {"m": 64, "n": 128, "dtype": "float16"}
_BLOB = b"\x00" * 64
_SRC = "x" * 65536

SHAPES: dict[str, Shape] = {
    "str, int": Shape("f('matmul', 4)", {}, ("matmul", 4), {}),
    "keywords": Shape("f(op='matmul', m=4)", {}, (), {"op": "matmul", "m": 4}),
    "floats": Shape("f(0.5, 0.001)", {}, (0.5, 0.001), {}),
    "shape tuple": Shape("f(shape)", {"shape": _SHAPE}, (_SHAPE,), {}),
    "nested tuples": Shape(
        "f(layout, meta)", {"layout": _LAYOUT, "meta": _META}, (_LAYOUT, _META), {}
    ),
    "dict": Shape("f(cfg)", {"cfg": _CFG}, (_CFG,), {}, lru_call="f(tuple(sorted(cfg.items())))"),
    "bytes": Shape("f(blob, 4)", {"blob": _BLOB}, (_BLOB, 4), {}),
    "64 KiB str": Shape("f(src)", {"src": _SRC}, (_SRC,), {}),
}

RECORD_TARGET = 2.0
GET_TARGET = 3.0


def lru_side(shape: Shape, cached: Any) -> tuple[str, tuple[str, dict[str, Any]]]:
    """The baseline of a shape: an ``lru_cache(typed=True)`` hit, warmed."""
    namespace = {**shape.values, "f": cached}
    statement = shape.lru_call or shape.call
    exec(statement, namespace)  # the one miss
    return "lru_cache(typed=True) hit", (statement, namespace)


def memo_rows(cache: Any, opts: Options, *, label: str = "", torch_note: str = "") -> list[Row]:
    """Rows for ``record`` and ``get`` memo hits of every shape, through ``cache``."""
    recorded = cache.record()(kernel)
    cached = functools.lru_cache(maxsize=None, typed=True)(kernel)
    repeat, seconds = opts.n(15, 3), opts.n(20, 3) / 100
    rows = []
    for name, shape in SHAPES.items():
        baseline = lru_side(shape, cached)
        ours = {**shape.values, "f": recorded}
        exec(shape.call, ours)  # the miss: computed, stored, indexed
        pair = compare(
            baseline,
            (f"fcache.record memo hit{label}", (shape.call, ours)),
            number=None,
            repeat=repeat,
            seconds=seconds,
        )
        rows.append(
            row_from_pair(
                f"record memo hit{label}", name, pair, target=RECORD_TARGET, note=torch_note
            )
        )
        params = (shape.args, shape.kwargs)
        hit = cache.get(kernel, params)
        if hit is None or hit.value != kernel():
            raise AssertionError(f"{name}: fcache.get missed an entry record() made")
        pair = compare(
            baseline,
            (
                f"fcache.get memo hit{label}",
                ("c.get(k, p)", {"c": cache, "k": kernel, "p": params}),
            ),
            number=None,
            repeat=repeat,
            seconds=seconds,
        )
        rows.append(
            row_from_pair(f"get memo hit{label}", name, pair, target=GET_TARGET, note=torch_note)
        )
    stats = cache.stats()
    if stats.memo_hits == 0:
        raise AssertionError("no memo hit was counted")
    return rows


def run(opts: Options) -> dict[str, list[Row]]:
    from redis_cache.config import Settings  # noqa: PLC0415
    from redis_cache.interfaces import FastCache  # noqa: PLC0415

    root = Path(tempfile.mkdtemp(prefix="bench-memo-"))
    try:
        cache = FastCache(Settings(dir=root, stats_interval=0))
        rows = memo_rows(cache, opts)
        cache.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report("1. memo hit vs functools.lru_cache(typed=True), every argument shape", rows)
    save("memo_hit", {"rows": [r.to_json() for r in rows]}, opts.out)
    return {"memo_hit": rows}


if __name__ == "__main__":
    command_line(run, __doc__)
