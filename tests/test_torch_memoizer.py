"""Code written for torch 2.13's memoizers switches to redis_cache by changing its import.

- One call sequence (record, replay, memoize, encoder and decoder factories, a deferred
  recording, a second process) runs against ``torch._inductor.runtime.caching`` and
  against ``redis_cache``; what the caller sees (results, ``KeyError``s, calls) is the same.
- torch's own ``should_pad`` sequences (its ShouldPadMemoizerTest) with
  ``redis_cache.encoders.should_pad_params_encoder`` on a ``PersistentMemoizer``.

torch is required: these fail under ``CI=true`` when it is missing.
"""

from __future__ import annotations

import importlib
import shutil
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock, patch

import pytest

import redis_cache
from redis_cache import config
from redis_cache.memoizer import DeferredRecording
from tests.support.helpers import make_settings
from tests.support.torch_workers import require_torch

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def torch_caching() -> types.ModuleType:
    require_torch()
    return importlib.import_module("torch._inductor.runtime.caching")


@pytest.fixture
def settings(tmp_path: Path) -> config.Settings:
    return make_settings(tmp_path / "rc", stats_interval=0)


def call_sequence(caching: Any, new_persistent: Any, deferred_cls: Any) -> list[Any]:
    """What a caller of either module observes, step by step."""
    seen: list[Any] = []
    calls: list[int] = []

    def compute(x: int) -> int:
        calls.append(x)
        return x * 3

    def outcome(fn: Any, *args: Any) -> Any:
        try:
            return ("value", fn(*args))
        except KeyError:
            return ("KeyError",)

    memoizer = caching.Memoizer()
    seen.append(outcome(memoizer.replay()(compute), 1))
    seen.append(outcome(memoizer.record()(compute), 1))
    seen.append(outcome(memoizer.replay()(lambda x: None), 1))  # same parameters, other fn
    memoized = memoizer.memoize()(compute)
    seen.append([outcome(memoized, 2), outcome(memoized, 2)])

    def encoder(fn: Any) -> Any:
        return lambda *args, **kwargs: lambda result: {"v": result, "args": list(args)}

    def decoder(fn: Any) -> Any:
        return lambda *args, **kwargs: lambda encoded: encoded["v"] + 1000

    coded = memoizer.memoize(custom_result_encoder=encoder, custom_result_decoder=decoder)
    seen.append([outcome(coded(compute), 4), outcome(coded(compute), 4)])

    pending: list[Any] = []

    def deferring(fn: Any) -> Any:
        def encode(result: Any) -> Any:
            pending.append(deferred_cls())
            return pending[-1]

        return lambda *args, **kwargs: encode

    later = memoizer.memoize(custom_result_encoder=deferring)(compute)
    seen.append([outcome(later, 5), outcome(later, 5)])
    pending[0].finalize(55)
    seen.append(outcome(later, 5))

    first = new_persistent()
    first.memoize()(compute)(7)
    second = new_persistent()  # a later process: in-process entries empty, disk has it
    seen.append(outcome(second.replay()(compute), 7))
    seen.append(outcome(second.replay()(compute), 8))
    seen.append(list(calls))
    return seen


def test_the_same_calls_see_the_same_behaviour(
    torch_caching: Any, settings: config.Settings
) -> None:
    torch_interfaces = importlib.import_module("torch._inductor.runtime.caching.interfaces")
    sub_dir = Path(f"redis-cache-parity-{uuid.uuid4().hex[:8]}")
    made: list[Any] = []

    def torch_persistent() -> Any:
        made.append(torch_caching.PersistentMemoizer(sub_dir=sub_dir))
        return made[-1]

    try:
        with patch.object(
            importlib.import_module("torch._inductor.runtime.caching.config"),
            "IS_CACHING_MODULE_ENABLED",
            lambda: True,
        ):
            theirs = call_sequence(
                torch_caching, torch_persistent, torch_interfaces.DeferredRecording
            )
    finally:
        for memoizer in made:
            shutil.rmtree(memoizer._disk_cache._cache_dir, ignore_errors=True)

    ours_made: list[redis_cache.PersistentMemoizer] = []

    def our_persistent() -> redis_cache.PersistentMemoizer:
        if ours_made:
            ours_made[-1].close()  # the earlier "process" has exited
        ours_made.append(redis_cache.PersistentMemoizer(sub_dir=sub_dir, settings=settings))
        return ours_made[-1]

    with patch.object(config, "current", lambda: settings):
        ours = call_sequence(redis_cache, our_persistent, DeferredRecording)
    for memoizer in ours_made:
        memoizer.close()
    assert ours == theirs
    assert theirs[0] == ("KeyError",) and theirs[2] == ("value", 3)  # the sequence means it


# --------------------------------------------------------------------------- should_pad


@pytest.fixture
def pad_memoizer(torch_caching: Any, settings: config.Settings) -> Iterator[Any]:
    memoizer = redis_cache.PersistentMemoizer(sub_dir=Path("should_pad"), settings=settings)
    yield memoizer
    memoizer.close()


def mock_match(mat1: Any, mat2: Any) -> Any:
    """The little of a pattern-matcher Match that the encoder reads: two placeholder nodes."""
    match = MagicMock()
    nodes = MagicMock(), MagicMock()
    for node, tensor in zip(nodes, (mat1, mat2), strict=True):
        node.op = "placeholder"
        node.meta = {"val": tensor}
    match.kwargs = {"mat1": nodes[0], "mat2": nodes[1]}
    return match


def should_pad_counting(memoizer: Any, decide: Any) -> tuple[Any, list[int]]:
    calls: list[int] = []

    @memoizer.memoize(custom_params_encoder=redis_cache.encoders.should_pad_params_encoder)
    def mock_should_pad(match: Any, mat1: Any, mat2: Any, op: Any, input: Any = None) -> bool:
        calls.append(1)
        return bool(decide(mat1, mat2, op, input))

    return mock_should_pad, calls


def test_should_pad_keys_on_tensor_metadata(pad_memoizer: Any) -> None:
    import torch  # noqa: PLC0415 - optional; the fixture made sure it imports

    should_pad, calls = should_pad_counting(
        pad_memoizer, lambda m1, m2, op, inp: m1.shape[0] > 10 and m1.dtype == torch.float32
    )
    mm = torch.ops.aten.mm
    small = torch.randn(8, 16), torch.randn(16, 32)
    match = mock_match(*small)
    assert should_pad(match, *small, mm) is False
    assert should_pad(match, *small, mm) is False
    assert len(calls) == 1
    # Same metadata, different data: the same entry.
    assert should_pad(match, torch.randn(8, 16), torch.randn(16, 32), mm) is False
    assert len(calls) == 1
    # Shape, dtype, op and the optional input are each part of the key.
    assert should_pad(match, torch.randn(12, 16), torch.randn(16, 32), mm) is True
    half = torch.randn(12, 16, dtype=torch.float16), torch.randn(16, 32, dtype=torch.float16)
    assert should_pad(match, *half, mm) is False
    assert should_pad(match, *small, torch.ops.aten.addmm) is False
    assert should_pad(match, *small, torch.ops.aten.addmm, input=torch.randn(32)) is False
    assert len(calls) == 5


def test_should_pad_replays_from_disk_in_a_new_process(
    pad_memoizer: Any, settings: config.Settings
) -> None:
    import torch  # noqa: PLC0415

    should_pad, calls = should_pad_counting(pad_memoizer, lambda *a: True)
    mats = torch.randn(8, 16), torch.randn(16, 32)
    assert should_pad(mock_match(*mats), *mats, torch.ops.aten.mm) is True
    pad_memoizer.close()
    later = redis_cache.PersistentMemoizer(sub_dir=Path("should_pad"), settings=settings)
    again, again_calls = should_pad_counting(later, lambda *a: False)
    assert again(mock_match(*mats), *mats, torch.ops.aten.mm) is True
    assert (len(calls), len(again_calls)) == (1, 0)
    later.close()
