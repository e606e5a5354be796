"""dcache under local determinism (disk + file locks), strict modes, dumps and prepopulation."""

from __future__ import annotations

import multiprocessing
import os
import threading
from pathlib import Path
from typing import Any

import pytest

import redis_cache
from redis_cache import dumpfile, exceptions
from redis_cache.interfaces import DeterministicCache
from tests.support.helpers import (
    call_many,
    compile_quick,
    compile_tagged,
    dcache_worker,
    entry_relpath,
    make_settings,
)


def det(tmp: Path, **overrides: Any) -> DeterministicCache:
    return DeterministicCache(make_settings(tmp, deterministic=True, **overrides))


def kernel(x: int) -> tuple[int, str]:
    return (x, "kernel")


def test_dcache_refuses_when_determinism_is_off(tmp_path: Path) -> None:
    cache = DeterministicCache(make_settings(tmp_path))
    with pytest.raises(exceptions.DeterministicCachingDisabledError):
        cache.get(kernel, ((1,), {}))
    with pytest.raises(exceptions.DeterministicCachingDisabledError):
        cache.record()(kernel)(1)


def test_record_returns_the_stored_first_result(tmp_path: Path) -> None:
    cache = det(tmp_path)
    calls: list[int] = []

    @cache.record()
    def f(x: int) -> list[Any]:
        calls.append(x)
        return [x, (x,)]

    first = f(2)
    assert first == [2, (2,)]
    assert type(first[1]) is tuple
    assert f(2) == first
    assert calls == [2]
    other = det(tmp_path)
    assert other.get(f.__wrapped__, ((2,), {})) == redis_cache.Hit([2, (2,)])  # type: ignore[attr-defined]


def test_threads_stampeding_one_key_compute_once(tmp_path: Path) -> None:
    cache = det(tmp_path)
    calls: list[int] = []
    barrier = threading.Barrier(8)

    @cache.record()
    def slow(x: int) -> str:
        calls.append(x)
        return f"{x}-{threading.get_ident()}"

    results: list[str] = []

    def worker() -> None:
        barrier.wait()
        results.append(slow(5))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(set(results)) == 1


def test_fn_raising_releases_the_lock_and_stores_nothing(tmp_path: Path) -> None:
    cache = det(tmp_path, lock_timeout=2.0)
    attempts: list[int] = []

    @cache.record()
    def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) == 1:
            raise RuntimeError("compiler crashed")
        return x

    with pytest.raises(RuntimeError):
        flaky(1)
    assert flaky(1) == 1  # the lock was released: no FileLockTimeoutError
    assert attempts == [1, 1]


def test_file_lock_timeout(tmp_path: Path) -> None:
    cache = det(tmp_path, lock_timeout=0.05)
    backend = cache._runtime()
    key = cache.entry_key(kernel, ((1,), {}))
    holder = redis_cache.locks.file_lock(backend.disk.lock_path(key))
    holder.acquire()
    try:
        with pytest.raises(exceptions.FileLockTimeoutError) as info:
            cache.record()(kernel)(1)
        assert isinstance(info.value, exceptions.SystemError)
    finally:
        holder.release()


def test_corrupt_sync_entry_raises_value_decoding_error_naming_the_key(tmp_path: Path) -> None:
    cache = det(tmp_path)
    assert cache.insert(kernel, ((1,), {}), (1, "kernel"))
    key = cache.entry_key(kernel, ((1,), {}))
    path = Path(cache._runtime().disk.path(key))
    path.write_bytes(path.read_bytes()[:-3])
    cold = det(tmp_path)
    with pytest.raises(exceptions.ValueDecodingError) as info:
        cold.get(kernel, ((1,), {}))
    assert key.digest in str(info.value)
    assert path.exists()  # dcache never repairs behind an operator's back


def test_strict_cached_mode(tmp_path: Path) -> None:
    det(tmp_path).insert(kernel, ((1,), {}), (1, "kernel"))
    strict = det(tmp_path, strict="cached")
    assert strict.get(kernel, ((1,), {})) == redis_cache.Hit((1, "kernel"))
    with pytest.raises(exceptions.StrictDeterministicCachingKeyNotFoundError):
        strict.get(kernel, ((2,), {}))
    with pytest.raises(exceptions.StrictDeterministicCachingKeyNotFoundError):
        strict.record()(kernel)(2)
    with pytest.raises(exceptions.StrictDeterministicCachingInsertionError):
        strict.insert(kernel, ((3,), {}), (3, "kernel"))


def test_dump_prepopulate_and_strict_prepopulated(tmp_path: Path) -> None:
    source = det(tmp_path / "a")
    wrapped = source.record()(kernel)
    assert [wrapped(i) for i in range(3)] == [(i, "kernel") for i in range(3)]
    dump = tmp_path / "dump.rcd"
    assert source.dump(dump) == 3

    # A machine with an empty disk, replaying only from the dump.
    replay = det(tmp_path / "b", strict="prepopulated", prepopulate=dump)
    calls: list[int] = []

    @replay.record()
    def kernel_again(x: int) -> tuple[int, str]:  # never called
        calls.append(x)
        return (x, "wrong")

    assert replay.get(kernel, ((2,), {})) == redis_cache.Hit((2, "kernel"))
    with pytest.raises(exceptions.StrictDeterministicCachingKeyNotFoundError):
        replay.get(kernel, ((9,), {}))
    with pytest.raises(exceptions.StrictDeterministicCachingInsertionError):
        replay.insert(kernel, ((9,), {}), (9, "kernel"))
    assert calls == []


def test_dump_merges_equal_values_and_refuses_conflicts(tmp_path: Path) -> None:
    dump = tmp_path / "dump.rcd"
    one = det(tmp_path / "one")
    one.insert(kernel, ((1,), {}), (1, "kernel"))
    assert one.dump(dump) == 1
    two = det(tmp_path / "two")
    two.insert(kernel, ((1,), {}), (1, "kernel"))  # equal value
    two.insert(kernel, ((2,), {}), (2, "kernel"))
    assert two.dump(dump) == 2
    three = det(tmp_path / "three")
    three.insert(kernel, ((2,), {}), (2, "DIFFERENT"))
    before = dump.read_bytes()
    with pytest.raises(exceptions.DeterministicCachingIMCDumpConflictError):
        three.dump(dump)
    assert dump.read_bytes() == before  # nothing written on conflict


def test_dump_conflict_is_type_aware(tmp_path: Path) -> None:
    dump = tmp_path / "dump.rcd"
    one = det(tmp_path / "one")
    one.insert(kernel, ((1,), {}), 1)
    one.dump(dump)
    two = det(tmp_path / "two")
    two.insert(kernel, ((1,), {}), True)  # == 1, but another result
    with pytest.raises(exceptions.DeterministicCachingIMCDumpConflictError):
        two.dump(dump)


def test_truncated_dump_is_refused(tmp_path: Path) -> None:
    source = det(tmp_path / "a")
    for i in range(5):
        source.insert(kernel, ((i,), {}), (i, "kernel"))
    dump = tmp_path / "dump.rcd"
    source.dump(dump)
    dump.write_bytes(dump.read_bytes()[:-10])
    with pytest.raises(dumpfile.InvalidDumpFileError):
        det(tmp_path / "b", prepopulate=dump).get(kernel, ((1,), {}))


def test_bad_deterministic_setting_is_named_by_dcache_only(tmp_path: Path) -> None:
    settings = redis_cache.config.load(
        {"REDIS_CACHE_DETERMINISTIC": "yes", "REDIS_CACHE_DIR": str(tmp_path)}
    )
    dcache = DeterministicCache(settings)
    with pytest.raises(exceptions.DeterministicCachingInvalidConfigurationError) as info:
        dcache.get(kernel, ((1,), {}))
    assert "REDIS_CACHE_DETERMINISTIC" in str(info.value)
    assert "'yes'" in str(info.value)
    fcache = redis_cache.FastCache(settings)
    assert fcache.get(kernel, ((1,), {})) is None  # fcache keeps working


def test_concurrent_dumps_to_one_path_keep_every_entry(tmp_path: Path) -> None:
    dump = tmp_path / "dump.rcd"
    caches = []
    for i in range(6):
        cache = det(tmp_path / f"m{i}")
        cache.insert(kernel, ((i,), {}), (i, "kernel"))
        caches.append(cache)
    barrier = threading.Barrier(len(caches))

    def dump_it(cache: DeterministicCache) -> None:
        barrier.wait()
        cache.dump(dump)

    threads = [threading.Thread(target=dump_it, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(dumpfile.read(dump)) == 6


# --------------------------------------------------------------------------- issue 9 regressions

SPAWN = multiprocessing.get_context("spawn")


def local_fleet_env(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Environment for spawned workers: local determinism on ``root``."""
    for name in list(os.environ):
        if name.startswith("REDIS_CACHE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("REDIS_CACHE_DETERMINISTIC", "1")
    monkeypatch.setenv("REDIS_CACHE_DETERMINISM", "local")
    monkeypatch.setenv("REDIS_CACHE_DIR", str(root))


@pytest.mark.slow
@pytest.mark.parametrize("occupant", ["dangling symlink", "directory"])
def test_item03_local_dcache_never_returns_an_unstored_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, occupant: str
) -> None:
    """The winning entry exists but cannot be read: three processes, no value, an error each.

    (A directory or a dangling symlink stands in for an unreadable file: the suite may
    run as root, which reads files whatever their mode.)
    """
    root = tmp_path / "machine"
    relpath = entry_relpath(tmp_path / "scratch", det, compile_tagged, ((1,), {}))
    path = root / relpath
    path.parent.mkdir(parents=True)
    if occupant == "directory":
        path.mkdir()
    else:
        path.symlink_to(tmp_path / "gone")
    local_fleet_env(monkeypatch, root)
    out = SPAWN.Queue()
    barrier = SPAWN.Barrier(3)
    procs = [
        SPAWN.Process(target=dcache_worker, args=("compile_tagged", 1, barrier, out))
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    reports = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    returned = [r["value"] for r in reports if r["error"] is None]
    assert returned == [], f"dcache returned values nothing stored: {returned}"
    for r in reports:
        assert relpath.name in r["error"], r["error"]  # the error names the entry
    assert path.is_dir() or path.is_symlink()  # never repaired behind an operator's back


@pytest.mark.slow
def test_item06_close_before_exit_keeps_the_at_exit_dump(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that calls close() and exits still dumps what it memoized."""
    local_fleet_env(monkeypatch, tmp_path / "machine")
    dump = tmp_path / "at-exit.rcd"
    monkeypatch.setenv("REDIS_CACHE_DUMP", str(dump))
    proc = SPAWN.Process(target=call_many, args=("dcache", "compile_quick", [1, 2, 3]))
    proc.start()  # records three results, calls dcache.close(), exits normally
    proc.join(60)
    assert proc.exitcode == 0
    assert dump.exists()
    records = dumpfile.read(dump)
    assert len(records) == 3, f"the at-exit dump holds {len(records)} entries, not the 3 recorded"
    replay = det(tmp_path / "empty", strict="prepopulated", prepopulate=dump)
    for x in (1, 2, 3):
        hit = replay.get(compile_quick, ((x,), {}))
        assert hit is not None and hit.value.startswith(f"{x}@")
