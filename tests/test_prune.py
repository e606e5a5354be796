"""Bounded disk layer: least-recently-used pruning, in one process and under real concurrency."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest

from redis_cache import locks, prune
from redis_cache.layers import DiskLayer, EntryKey, Outcome
from redis_cache.layers.disk import CHECK_FRACTION, allocated

BLOCK = 4096


def key(n: int, space: str = "fcache", callee: str = "tests.prune.fn") -> EntryKey:
    return EntryKey(callee, hashlib.sha256(f"{space}{n}".encode()).hexdigest(), space)  # type: ignore[arg-type]


def item(n: int, size: int = 1000) -> bytes:
    """Deterministic bytes for key n: a reader can tell a torn or foreign file."""
    seed = hashlib.sha256(str(n).encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def usage(layer: DiskLayer, space: str = "fcache") -> int:
    return sum(f.usage for f in layer.scan() if f.is_entry and f.space == space)


def age(layer: DiskLayer, k: EntryKey, seconds_ago: float) -> None:
    then = time.time() - seconds_ago
    os.utime(layer.path(k), (then, then))


@pytest.fixture
def layer(tmp_path: Path) -> DiskLayer:
    return DiskLayer(tmp_path, "ns")


def fill(layer: DiskLayer, n: int, size: int = 1000) -> list[EntryKey]:
    """n entries, key 0 the least recently used, each a minute newer than the last."""
    keys = [key(i) for i in range(n)]
    for i, k in enumerate(keys):
        assert layer.insert(k, item(i, size)) is Outcome.WRITTEN
        age(layer, k, 3600 + 60 * (n - i))
    return keys


def test_prune_removes_the_least_recently_used_down_to_the_low_water_mark(
    layer: DiskLayer,
) -> None:
    keys = fill(layer, 20)
    assert layer.get(keys[0]) == item(0)  # a hit: key 0 is now the most recently used
    report = prune.prune(layer, 10 * BLOCK)
    assert report is not None
    assert (report.entries, report.bytes) == (20, 20 * BLOCK)
    assert report.removed == 11 and report.removed_bytes == 11 * BLOCK  # down to 9 <= 90%
    assert usage(layer) == 9 * BLOCK
    survivors = [i for i, k in enumerate(keys) if layer.get(k) is not None]
    assert survivors == [0, *range(12, 20)]


def test_within_the_bound_nothing_goes_and_dry_run_only_reports(layer: DiskLayer) -> None:
    fill(layer, 10)
    report = prune.prune(layer, 10 * BLOCK)
    assert report is not None and report.removed == 0
    dry = prune.prune(layer, 5 * BLOCK, dry_run=True)
    assert dry is not None and dry.dry_run
    assert (dry.removed, dry.removed_bytes, dry.bytes_after) == (6, 6 * BLOCK, 4 * BLOCK)
    assert usage(layer) == 10 * BLOCK


def test_dcache_entries_are_never_pruned_nor_counted(layer: DiskLayer) -> None:
    for i in range(10):
        layer.insert(key(i, "dcache"), item(i))
        age(layer, key(i, "dcache"), 86400)
    fill(layer, 4)
    report = prune.prune(layer, 2 * BLOCK)
    assert report is not None and report.entries == 4 and report.removed == 3
    assert all(layer.get(key(i, "dcache")) == item(i) for i in range(10))


def test_an_entry_used_after_the_scan_is_kept(layer: DiskLayer) -> None:
    keys = fill(layer, 3)
    victims, _, _ = prune.plan(layer.scan(), 2 * BLOCK)
    assert [v.path for v in victims] == [layer.path(k) for k in keys[:2]]
    layer.get(keys[0])  # a reader refreshes it between the scan and the removal
    assert prune._remove_if_unchanged(victims[0]) is False
    assert prune._remove_if_unchanged(victims[1]) is True
    assert layer.get(keys[0]) == item(0) and layer.get(keys[1]) is None


def test_stale_leftovers_of_killed_writers_are_removed(layer: DiskLayer) -> None:
    k = fill(layer, 1)[0]
    shard = Path(layer.path(k)).parent
    old, new = shard / ".tmp-1-old", shard / ".tmp-2-new"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    aside = shard / f"{k.digest}.discard-1-abc"
    aside.mkdir()
    for path in (old, aside):
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    report = prune.prune(layer, 100 * BLOCK)
    assert report is not None and report.leftovers == 2
    assert not old.exists() and not aside.exists() and new.exists()
    assert layer.get(k) == item(0)


def test_a_second_pruner_skips_while_one_holds_the_lock(layer: DiskLayer) -> None:
    fill(layer, 4)
    holder = locks.file_lock(layer.prune_lock_path)
    with locks.acquire_file_lock(holder, 0):
        assert prune.prune(layer, BLOCK) is None
        assert prune.prune(layer, BLOCK, wait=0.05) is None
    assert usage(layer) == 4 * BLOCK
    assert prune.prune(layer, BLOCK) is not None
    assert usage(layer) == 0


def test_a_bounded_layer_prunes_itself_in_the_background(tmp_path: Path) -> None:
    bound = 40 * BLOCK
    layer = DiskLayer(tmp_path, "ns", max_bytes=bound)
    # The first write of a process checks (nobody has yet), then every tenth of the bound.
    per_check = int(bound * CHECK_FRACTION) // BLOCK
    for i in range(200):
        assert layer.insert(key(i), item(i)) is Outcome.WRITTEN
        if i % per_check == 0:
            layer.wait_for_prune(30)
    layer.wait_for_prune(30)
    assert usage(layer) <= bound + per_check * BLOCK
    assert layer.prune_stamp_path.exists()
    # The newest entries survive; the oldest are gone.
    assert layer.get(key(199)) == item(199)
    assert layer.get(key(0)) is None


def test_an_item_larger_than_the_bound_is_refused(tmp_path: Path) -> None:
    layer = DiskLayer(tmp_path, "ns", max_bytes=BLOCK)
    assert layer.insert(key(1), item(1, BLOCK + 1)) is Outcome.UNAVAILABLE
    assert layer.get(key(1)) is None
    # The synchronization layer of local determinism takes it: it is never pruned.
    assert layer.insert(key(1, "dcache"), item(1, BLOCK + 1)) is Outcome.WRITTEN


def test_usage_counts_per_space_and_callee(layer: DiskLayer) -> None:
    fill(layer, 3)
    layer.insert(key(9, "dcache", "other.g"), item(9, 10))
    found = prune.disk_usage(layer)
    assert (found.total.entries, found.total.bytes) == (4, 3010)
    assert found.spaces["fcache"].entries == 3 and found.spaces["dcache"].bytes == 10
    assert found.callees["tests.prune.fn"].disk_bytes == 3 * allocated(1000)
    assert found.callees["other.g"].entries == 1


# --------------------------------------------------------------------------- real processes

ENTRIES = 400
ENTRY_SIZE = 3000
BOUND = 60 * BLOCK


def _writer(root: str, seed: int, rounds: int, out: Any) -> None:
    layer = DiskLayer(Path(root), "ns", max_bytes=BOUND)
    written = 0
    for r in range(rounds):
        n = (seed * 7919 + r * 31) % ENTRIES
        if layer.insert(key(n), item(n, ENTRY_SIZE)) is Outcome.WRITTEN:
            written += 1
    layer.wait_for_prune(60)
    out.put(("writer", written, 0))


def _reader(root: str, seed: int, rounds: int, out: Any) -> None:
    layer = DiskLayer(Path(root), "ns")
    hits = wrong = 0
    for r in range(rounds):
        n = (seed * 104729 + r * 17) % ENTRIES
        data = layer.get(key(n))
        if data is not None:
            hits += 1
            wrong += data != item(n, ENTRY_SIZE)
    out.put(("reader", hits, wrong))


def _pruner(root: str, rounds: int, out: Any) -> None:
    layer = DiskLayer(Path(root), "ns")
    removed = skipped = 0
    for _ in range(rounds):
        report = prune.prune(layer, BOUND)
        if report is None:
            skipped += 1
        else:
            removed += report.removed
    out.put(("pruner", removed, skipped))


@pytest.mark.slow
def test_pruning_under_concurrent_writers_readers_and_pruners(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), s, 2000, out)) for s in range(3)]
    procs += [ctx.Process(target=_reader, args=(str(tmp_path), s, 10000, out)) for s in range(3)]
    procs += [ctx.Process(target=_pruner, args=(str(tmp_path), 100, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    by_role: dict[str, list[tuple[int, int]]] = {}
    for role, a, b in results:
        by_role.setdefault(role, []).append((a, b))
    assert sum(w for w, _ in by_role["writer"]) > ENTRIES // 2
    assert sum(h for h, _ in by_role["reader"]) > 0
    assert sum(wrong for _, wrong in by_role["reader"]) == 0  # never a torn or foreign file
    assert sum(r for r, _ in by_role["pruner"]) > 0
    layer = DiskLayer(tmp_path, "ns")
    final = prune.prune(layer, BOUND)
    assert final is not None and final.bytes_after <= BOUND
    files = list(layer.scan())
    assert all(f.is_entry and f.regular for f in files), "leftover temporaries"
    for f in files:
        n = next(i for i in range(ENTRIES) if key(i).digest == os.path.basename(f.path))
        assert Path(f.path).read_bytes() == item(n, ENTRY_SIZE)
