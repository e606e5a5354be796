"""One contract, every layer: first writer wins, misses are None, discard repairs its own bytes.

Each layer runs the same ``LayerContract`` by providing ``layer`` and ``item``
fixtures; the Redis layer runs it on fakeredis here and on a real server in
``test_redis_layer.py``.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from redis_cache import exceptions
from redis_cache.layers import DiskLayer, EntryKey, Layer, MemoEntry, MemoLayer, Outcome
from redis_cache.layers.disk import MAX_CALLEE_DIR


def key(n: int = 0) -> EntryKey:
    return EntryKey("tests.contract.fn", f"{n:064x}", "fcache")


class LayerContract:
    """Subclasses provide ``layer`` (an empty layer) and ``item(i)`` (distinct stored items)."""

    def item(self, i: int) -> Any:
        raise NotImplementedError  # pragma: no cover - every subclass overrides

    def test_miss_is_none(self, layer: Layer[Any]) -> None:
        assert layer.get(key()) is None

    def test_insert_then_get(self, layer: Layer[Any]) -> None:
        assert layer.insert(key(), self.item(1)) is Outcome.WRITTEN
        assert layer.get(key()) == self.item(1)

    def test_first_writer_wins(self, layer: Layer[Any]) -> None:
        assert layer.insert(key(), self.item(1)) is Outcome.WRITTEN
        assert layer.insert(key(), self.item(2)) is Outcome.EXISTED
        assert layer.get(key()) == self.item(1)

    def test_keys_are_independent(self, layer: Layer[Any]) -> None:
        layer.insert(key(1), self.item(1))
        layer.insert(key(2), self.item(2))
        assert layer.get(key(1)) == self.item(1)
        assert layer.get(key(2)) == self.item(2)
        assert layer.get(key(3)) is None

    def test_discard_removes_only_the_expected_item(self, layer: Layer[Any]) -> None:
        layer.insert(key(), self.item(1))
        assert layer.discard(key(), self.item(2)) is False
        assert layer.get(key()) == self.item(1)
        assert layer.discard(key(), layer.get(key())) is True
        assert layer.get(key()) is None
        assert layer.discard(key(), self.item(1)) is False
        assert layer.insert(key(), self.item(2)) is Outcome.WRITTEN

    def test_racing_threads_one_winner(self, layer: Layer[Any]) -> None:
        barrier = threading.Barrier(8)
        wins: list[int] = []

        def writer(i: int) -> None:
            barrier.wait()
            if layer.insert(key(), self.item(i)) is Outcome.WRITTEN:
                wins.append(i)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1
        assert layer.get(key()) == self.item(wins[0])


class TestMemoLayer(LayerContract):
    @pytest.fixture
    def layer(self) -> MemoLayer:
        return MemoLayer()

    def item(self, i: int) -> MemoEntry:
        # Memo discards by identity: the same i must give the same object.
        return _MEMO_ITEMS.setdefault(i, MemoEntry(i, 1, key()))


_MEMO_ITEMS: dict[int, MemoEntry] = {}


class TestDiskLayer(LayerContract):
    @pytest.fixture
    def layer(self, tmp_path: Path) -> DiskLayer:
        return DiskLayer(tmp_path, "ns")

    def item(self, i: int) -> bytes:
        return f"entry-{i}".encode() * (i + 1)

    def test_namespaces_do_not_share_entries(self, tmp_path: Path) -> None:
        a, b = DiskLayer(tmp_path, "a"), DiskLayer(tmp_path, "b")
        a.insert(key(), b"x")
        assert b.get(key()) is None

    def test_entries_are_listed_without_temporaries(self, layer: DiskLayer) -> None:
        for i in range(3):
            layer.insert(key(i), self.item(i))
        assert len(layer.iter_files()) == 3

    # -- what is at an entry's path when it is not a good file (issue 9, item 25) --

    def test_a_directory_at_an_entry_path_is_corrupt_and_discard_removes_it(
        self, layer: DiskLayer
    ) -> None:
        path = Path(layer.path(key()))
        (path / "inside").mkdir(parents=True)
        (path / "inside" / "file").write_bytes(b"x")
        with pytest.raises(exceptions.CorruptEntryError) as info:
            layer.get(key())
        assert key().digest in str(info.value) and "directory" in str(info.value)
        assert layer.insert(key(), b"good") is Outcome.EXISTED  # the name is taken
        assert layer.discard(key(), b"whatever was expected") is True
        assert not os.path.lexists(path)
        assert layer.get(key()) is None
        assert layer.insert(key(), b"good") is Outcome.WRITTEN
        assert layer.get(key()) == b"good"
        assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no leftovers

    def test_a_dangling_symlink_is_corrupt_and_discard_removes_it(
        self, layer: DiskLayer, tmp_path: Path
    ) -> None:
        path = Path(layer.path(key()))
        path.parent.mkdir(parents=True)
        path.symlink_to(tmp_path / "nowhere")
        with pytest.raises(exceptions.CorruptEntryError, match="symbolic link"):
            layer.get(key())
        assert layer.discard(key(), b"") is True
        assert not os.path.lexists(path)
        assert layer.insert(key(), b"good") is Outcome.WRITTEN

    def test_a_symlink_to_a_good_file_is_not_followed(
        self, layer: DiskLayer, tmp_path: Path
    ) -> None:
        target = tmp_path / "elsewhere"
        target.write_bytes(b"planted")
        path = Path(layer.path(key()))
        path.parent.mkdir(parents=True)
        path.symlink_to(target)
        with pytest.raises(exceptions.CorruptEntryError, match="symbolic link"):
            layer.get(key())
        assert layer.discard(key(), b"something else") is True  # the link, not its target
        assert target.read_bytes() == b"planted"

    def test_a_fifo_is_corrupt_without_blocking_the_reader(self, layer: DiskLayer) -> None:
        path = Path(layer.path(key()))
        path.parent.mkdir(parents=True)
        os.mkfifo(path)
        with pytest.raises(exceptions.CorruptEntryError, match="FIFO"):
            layer.get(key())
        assert layer.discard(key(), b"") is True
        assert not os.path.lexists(path)

    def test_an_unreadable_entry_is_a_disk_error_and_is_not_discarded(
        self, tmp_path: Path
    ) -> None:
        root = Path(tempfile.mkdtemp(prefix="disk-eacces-"))
        try:
            root.chmod(0o755)  # an unprivileged reader can reach the entry, not read it
            layer = DiskLayer(root, "ns")
            assert layer.insert(key(), b"secret-ish") is Outcome.WRITTEN
            path = layer.path(key())
            os.chmod(path, 0)
            outcome = as_unprivileged(lambda: _get_and_discard(layer))
            assert outcome[0] == "DiskLayerError", outcome
            assert path in outcome[1] and "permission denied" in outcome[1]
            assert outcome[2] is False  # discard left it: not ours to judge
            assert os.path.exists(path)
        finally:
            shutil.rmtree(root)

    def test_entries_are_grouped_by_space_and_callee(self, layer: DiskLayer) -> None:
        odd = EntryKey("mod.<locals>.f/g", "ab" * 32, "dcache")
        long = EntryKey("m." + "x" * 300, "cd" * 32, "fcache")
        for k in (key(1), odd, long):
            assert layer.insert(k, b"v") is Outcome.WRITTEN
            assert layer.get(k) == b"v"
        found = {(f.space, f.callee) for f in layer.scan()}
        assert found == {
            ("fcache", "tests.contract.fn"),
            ("dcache", "mod.<locals>.f/g"),
            ("fcache", "m." + "x" * (MAX_CALLEE_DIR - 20) + "…"),
        }

    def test_a_hit_refreshes_the_recency_of_an_old_entry(self, layer: DiskLayer) -> None:
        layer.insert(key(1), b"old")
        layer.insert(key(2), b"fresh")
        hour_ago = time.time() - 3600
        for k in (key(1), key(2)):
            os.utime(layer.path(k), (hour_ago, hour_ago))
        assert layer.get(key(1)) == b"old"
        assert os.stat(layer.path(key(1))).st_mtime > hour_ago + 3000
        assert os.stat(layer.path(key(2))).st_mtime == pytest.approx(hour_ago)
        mtime = os.stat(layer.path(key(1))).st_mtime_ns
        layer.get(key(1))  # touched a moment ago: no second metadata write
        assert os.stat(layer.path(key(1))).st_mtime_ns == mtime


def _get_and_discard(layer: DiskLayer) -> tuple[str, str, bool]:
    try:
        layer.get(key())
        got = ("no error", "")
    except exceptions.CacheError as exc:
        got = (type(exc).__name__, str(exc))
    return (*got, layer.discard(key(), b"secret-ish"))


def as_unprivileged(fn: Callable[[], Any]) -> Any:
    """``fn()`` as a user that file permissions apply to (root's are bypassed): a forked child."""
    if os.geteuid() != 0:
        return fn()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, pickle.dumps(fn()))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)
