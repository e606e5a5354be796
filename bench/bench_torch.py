"""redis_cache side by side with PyTorch Inductor's own memoizers, where torch imports.

    /tmp/venv-torch/bin/python -m bench.bench_torch [--quick] [--out bench/results]

(``run_all.py`` runs this file with the interpreter given by ``--torch-python``, the
``BENCH_TORCH_PYTHON`` variable, or ``/tmp/venv-torch/bin/python`` if it exists: torch
is not a dependency of the project. Without torch, or if the module layout is not the
one expected, it writes ``{"skipped": reason}`` and prints ``skipped: ...``.)

10. The memo-hit and disk-hit workloads of benchmarks 1 and 2, through
``torch._inductor.runtime.caching.interfaces``' ``Memoizer`` / ``PersistentMemoizer``
(``memoize()``: replay, else record; enabled with ``TORCHINDUCTOR_ENABLE_CACHING_MODULE=1``)
and through ``fcache``, each against the same baseline measured in this run:
``lru_cache(typed=True)`` hit for memo hits, ``open().read()`` + ``Codec.decode`` of
redis_cache's entry file for disk hits. Ratios are comparable across the two libraries.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    PAYLOADS,
    Options,
    Row,
    command_line,
    compare,
    report,
    row_from_pair,
    rows_json,
    save,
)

# torch reads these once (functools.cache), so before it is imported.
_TORCH_DIR = tempfile.mkdtemp(prefix="bench-torch-")
os.environ["TORCHINDUCTOR_ENABLE_CACHING_MODULE"] = "1"
os.environ["TORCHINDUCTOR_CACHE_DIR"] = _TORCH_DIR
os.environ.setdefault("TORCHINDUCTOR_DUMP_MEMOIZER_CACHE", "0")
# PersistentMemoizer writes under torch's default_cache_dir() (not TORCHINDUCTOR_CACHE_DIR;
# /tmp/torchinductor_<user>) and keys on the arguments only: a sub_dir of our own per run
# keeps an earlier run's entries from being replayed; it is removed at the end.
_RUN_DIR = f"redis-cache-bench-{os.getpid()}-{secrets.token_hex(4)}"
_torch_dirs: list[Path] = []


# The isolation schema without runtime forms: with torch installed, the default schema
# re-reads torch's inductor configs on every call (see docs/benchmarks.md).
NO_RUNTIME = {"runtime_context": False, "compile_context": True}


def kernel(op: str, m: int) -> bytes:
    return op.encode() * m


def _torch_caching() -> tuple[Any, str]:
    """The torch module holding Memoizer and PersistentMemoizer, and torch's version."""
    import torch  # noqa: PLC0415

    try:
        from torch._inductor.runtime.caching import interfaces  # noqa: PLC0415
    except ImportError as exc:
        raise LookupError(
            f"torch {torch.__version__} has no torch._inductor.runtime.caching.interfaces: {exc}"
        ) from exc
    missing = [n for n in ("Memoizer", "PersistentMemoizer") if not hasattr(interfaces, n)]
    if missing:
        raise LookupError(f"torch {torch.__version__}: interfaces lacks {', '.join(missing)}")
    from torch._inductor.runtime.caching import config  # noqa: PLC0415

    if not config.IS_CACHING_MODULE_ENABLED():
        raise LookupError(f"torch {torch.__version__}: the caching module stays disabled")
    return interfaces, str(torch.__version__)


def _persistent(tci: Any, name: str) -> Any:
    memoizer = tci.PersistentMemoizer(sub_dir=Path(_RUN_DIR) / name)
    _torch_dirs.append(memoizer._disk_cache._cache_dir.parent)
    return memoizer


def memo_rows(tci: Any, opts: Options) -> list[Row]:
    from redis_cache.config import Settings  # noqa: PLC0415
    from redis_cache.interfaces import FastCache  # noqa: PLC0415

    root = Path(tempfile.mkdtemp(prefix="bench-torch-rc-"))
    cache = FastCache(Settings(dir=root, stats_interval=0))
    candidates = {
        "fcache.record memo hit": cache.record()(kernel),
        "fcache.record memo hit, runtime_context=False": cache.record(ischema=NO_RUNTIME)(kernel),
        "torch Memoizer.memoize hit": tci.Memoizer().memoize()(kernel),
        "torch PersistentMemoizer.memoize memory hit": _persistent(tci, "memo").memoize()(kernel),
    }
    cached = functools.lru_cache(maxsize=None, typed=True)(kernel)
    cached("matmul", 4)
    rows = []
    for name, fn in candidates.items():
        assert fn("matmul", 4) == kernel("matmul", 4)
        assert fn("matmul", 4) == kernel("matmul", 4)
        pair = compare(
            ("lru_cache(typed=True) hit", ("f('matmul', 4)", {"f": cached})),
            (name, ("f('matmul', 4)", {"f": fn})),
            number=None,
            repeat=opts.n(11, 3),
            seconds=opts.n(20, 2) / 100,
        )
        rows.append(row_from_pair("torch side by side: memo hit", name, pair, target=3.0))
    cache.close()
    shutil.rmtree(root, ignore_errors=True)
    return rows


def disk_rows(tci: Any, opts: Options) -> list[Row]:
    from redis_cache import context  # noqa: PLC0415
    from redis_cache.config import Settings  # noqa: PLC0415
    from redis_cache.interfaces import FastCache  # noqa: PLC0415

    rows = []
    root = Path(tempfile.mkdtemp(prefix="bench-torch-rc-"))
    try:
        for label, size in PAYLOADS.items():
            value = os.urandom(size)

            def produce(label: str, value: bytes = value) -> bytes:
                return value

            writer = FastCache(Settings(dir=root, stats_interval=0))
            writer.insert(produce, ((label,), {}), value)
            writer.insert(produce, ((label,), {}), value, ischema=NO_RUNTIME)  # type: ignore[arg-type]
            backend = writer._backend()
            key = writer._key(produce, ((label,), {}), context.isolation_key(None), None)
            path, codec = backend.disk.path(key), backend.codec
            reader = FastCache(Settings(dir=root, stats_interval=0))
            entries = reader._backend().memo._entries

            def ours_static(
                reader: Any = reader,
                produce: Any = produce,
                label: str = label,
                entries: Any = entries,
            ) -> object:
                entries.clear()
                return reader.get(produce, ((label,), {}), ischema=NO_RUNTIME)  # type: ignore[arg-type]

            memoizer = _persistent(tci, f"disk-{label}")
            memoized = memoizer.memoize()(produce)
            memoized(label)  # records to memory and disk
            memory = memoizer._memoizer._cache._memory

            def plain_read(path: str = path, codec: Any = codec, key: Any = key) -> object:
                with open(path, "rb") as f:
                    return codec.decode(key.key_id, f.read())

            def ours(
                reader: Any = reader,
                produce: Any = produce,
                label: str = label,
                entries: Any = entries,
            ) -> object:
                entries.clear()
                return reader.get(produce, ((label,), {}))

            def theirs(
                memoized: Any = memoized, label: str = label, memory: Any = memory
            ) -> object:
                memory.clear()
                return memoized(label)

            assert ours().value == value and theirs() == value  # type: ignore[union-attr]
            assert ours_static().value == value  # type: ignore[union-attr]
            for name, fn in (
                ("fcache.get disk hit", ours),
                ("fcache.get disk hit, runtime_context=False", ours_static),
                ("torch PersistentMemoizer disk hit", theirs),
            ):
                pair = compare(
                    (f"open().read()+decode {label}", plain_read),
                    (f"{name} {label}", fn),
                    number=None,
                    repeat=opts.n(11, 3) if size < 16_000_000 else opts.n(7, 2),
                    seconds=opts.n(20, 2) / 100 if size < 16_000_000 else opts.n(40, 5) / 100,
                )
                rows.append(
                    row_from_pair(
                        "torch side by side: disk hit", f"{name} {label}", pair, target=2.0
                    )
                )
            writer.close()
            reader.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def run(opts: Options) -> dict[str, Any]:
    try:
        tci, version = _torch_caching()
    except (ImportError, LookupError) as exc:
        reason = str(exc) if isinstance(exc, LookupError) else f"torch is not importable ({exc})"
        print(f"skipped: {reason}")
        save("torch", {"skipped": reason, "python": sys.executable}, opts.out)
        return {"skipped": reason}
    try:
        rows = report(
            f"10. redis_cache vs torch {version} memoizers: memo hit", memo_rows(tci, opts)
        )
        rows += report(
            f"10. redis_cache vs torch {version} memoizers: disk hit", disk_rows(tci, opts)
        )
    finally:
        for path in {_TORCH_DIR, *_torch_dirs}:
            shutil.rmtree(path, ignore_errors=True)
    save("torch", {"rows": rows_json(rows), "torch": version, "python": sys.executable}, opts.out)
    return {"torch": rows}


if __name__ == "__main__":
    command_line(run, __doc__)
