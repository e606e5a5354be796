"""Memo hits with torch installed (default isolation schema), beside torch's own Memoizer.

    /path/to/torch-venv/bin/python -m bench.bench_torch [--quick] [--out bench/results]

(``run_all`` runs this file with the interpreter given by ``--torch-python``, the
``BENCH_TORCH_PYTHON`` variable, or ``/tmp/venv-torch/bin/python`` if it exists: torch
is not a dependency of the project. Without torch, or without torch 2.13's caching
module, it writes ``{"skipped": reason}``.)

2. With torch importable, the default isolation schema has runtime forms (torch's
   determinism and matmul-precision flags, Inductor's configs) that can change between
   calls, so every memo hit must check them. For every shape of benchmark 1:

   - ``fcache.record`` and ``fcache.get`` memo hits against ``lru_cache(typed=True)``;
     target (issue 12): record <= 3x (get: no target with torch);
   - ``fcache.record`` memo hit against a hit of torch 2.13's
     ``torch._inductor.runtime.caching.interfaces.Memoizer().memoize()`` on the same
     function and arguments; target: faster (<= 1x). ``TORCHINDUCTOR_ENABLE_CACHING_MODULE=1``
     is set before torch is imported, else ``memoize()`` returns the function unwrapped
     and the baseline would be a plain call.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import Options, Row, command_line, compare, report, row_from_pair, save

# torch reads these once (functools.cache), so before it is imported.
_TORCH_DIR = tempfile.mkdtemp(prefix="bench-torch-")
atexit.register(shutil.rmtree, _TORCH_DIR, ignore_errors=True)  # also when skipped
os.environ["TORCHINDUCTOR_ENABLE_CACHING_MODULE"] = "1"
os.environ["TORCHINDUCTOR_CACHE_DIR"] = _TORCH_DIR
os.environ["TORCHINDUCTOR_DUMP_MEMOIZER_CACHE"] = "0"

RECORD_TARGET = 3.0
VS_TORCH_TARGET = 1.0


def _torch_memoizer() -> tuple[Any, str]:
    """torch's Memoizer class and torch's version; LookupError when unusable."""
    import torch  # noqa: PLC0415

    try:
        from torch._inductor.runtime.caching import config, interfaces  # noqa: PLC0415
    except ImportError as exc:
        raise LookupError(
            f"torch {torch.__version__} has no torch._inductor.runtime.caching: {exc}"
        ) from exc
    if not hasattr(interfaces, "Memoizer"):
        raise LookupError(f"torch {torch.__version__}: no caching.interfaces.Memoizer")
    if not config.IS_CACHING_MODULE_ENABLED():
        raise LookupError(f"torch {torch.__version__}: the caching module stays disabled")
    return interfaces.Memoizer, str(torch.__version__)


def vs_torch_rows(cache: Any, memoizer_cls: Any, opts: Options) -> list[Row]:
    from bench.bench_memo import SHAPES  # noqa: PLC0415
    from bench.kernels import kernel  # noqa: PLC0415

    recorded = cache.record()(kernel)
    rows = []
    for name, shape in SHAPES.items():
        memoized = memoizer_cls().memoize()(kernel)
        if memoized is kernel:
            raise LookupError("torch's Memoizer.memoize() returned the function unwrapped")
        theirs = {**shape.values, "f": memoized}
        ours = {**shape.values, "f": recorded}
        exec(shape.call, theirs)  # the misses
        exec(shape.call, ours)
        pair = compare(
            ("torch Memoizer.memoize hit", (shape.call, theirs)),
            ("fcache.record memo hit", (shape.call, ours)),
            number=None,
            repeat=opts.n(15, 3),
            seconds=opts.n(20, 3) / 100,
        )
        rows.append(
            row_from_pair(
                "record memo hit vs torch Memoizer (torch installed)",
                name,
                pair,
                target=VS_TORCH_TARGET,
            )
        )
    return rows


def run(opts: Options) -> dict[str, Any]:
    try:
        memoizer_cls, version = _torch_memoizer()
    except (ImportError, LookupError) as exc:
        reason = str(exc) if isinstance(exc, LookupError) else f"torch is not importable ({exc})"
        print(f"skipped: {reason}")
        save("torch_memo", {"skipped": reason, "python": sys.executable}, opts.out)
        return {"skipped": reason}
    from bench.bench_memo import memo_rows  # noqa: PLC0415
    from redis_cache.config import Settings  # noqa: PLC0415
    from redis_cache.interfaces import FastCache  # noqa: PLC0415

    root = Path(tempfile.mkdtemp(prefix="bench-torch-rc-"))
    try:
        cache = FastCache(Settings(dir=root, stats_interval=0))
        note = f"torch {version} importable, default isolation schema"
        rows = memo_rows(cache, opts, label=" (torch installed)", torch_note=note)
        for row in rows:
            if row.benchmark.startswith("record"):
                row.target = RECORD_TARGET
            else:
                row.target = None
        rows = report(f"2. memo hit with torch {version} vs lru_cache", rows)
        rows += report(
            f"2. memo hit vs torch {version} Memoizer", vs_torch_rows(cache, memoizer_cls, opts)
        )
        cache.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(_TORCH_DIR, ignore_errors=True)
    data = {"rows": [r.to_json() for r in rows], "torch": version, "python": sys.executable}
    save("torch_memo", data, opts.out)
    return {"torch_memo": rows}


if __name__ == "__main__":
    command_line(run, __doc__)
