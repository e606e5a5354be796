"""Isolation context: runtime settings that change between calls change the key.

Three worlds, each in a subprocess of its own: real torch (CI installs the
``torch`` extra), no torch at all, and a stand-in ``torch`` module holding only
the public attributes an older or stripped torch would have (the fallbacks).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from redis_cache import context
from tests.support.servers import require_module

FAKE_TORCH = """
import importlib.machinery, json, sys, tempfile, types
from pathlib import Path

state = {"deterministic": False, "inductor": b"\\x01"}
torch = types.ModuleType("torch")
torch.__spec__ = importlib.machinery.ModuleSpec("torch", None)
torch.__version__ = "0.0+stand-in"
torch.are_deterministic_algorithms_enabled = lambda: state["deterministic"]
torch.is_deterministic_algorithms_warn_only_enabled = lambda: False
torch.utils = types.SimpleNamespace(
    deterministic=types.SimpleNamespace(fill_uninitialized_memory=True))
torch.backends = types.SimpleNamespace(cuda=types.SimpleNamespace(matmul=types.SimpleNamespace(
    fp32_precision="ieee", allow_fp16_reduced_precision_reduction=True,
    allow_bf16_reduced_precision_reduction=True)))
torch.version = types.SimpleNamespace(cuda=None, hip=None)
inductor = types.ModuleType("torch._inductor")
config = types.ModuleType("torch._inductor.config")
config.get_hash = lambda: state["inductor"]
inductor.config = config
sys.modules.update({"torch": torch, "torch._inductor": inductor,
                    "torch._inductor.config": config})

from redis_cache import context
from redis_cache.config import Settings
from redis_cache.interfaces import FastCache

cache = FastCache(Settings(dir=Path(tempfile.mkdtemp())))
calls = []

def kernel(x):
    calls.append(state["deterministic"])
    return [x, state["deterministic"], state["inductor"].hex()]

recorded = cache.record()(kernel)
seen = [recorded(1), recorded(1)]
state["deterministic"] = True
seen += [recorded(1), recorded(1)]
state["deterministic"] = False
seen += [recorded(1)]
state["inductor"] = b"\\x02"
seen += [recorded(1), recorded(1)]
static = FastCache(Settings(dir=Path(tempfile.mkdtemp())))
flat = static.record(ischema={"runtime_context": False, "compile_context": True})(kernel)
print(json.dumps({
    "varies": context.IsolationKeyer(None).varies,
    "static_varies": context.IsolationKeyer(
        {"runtime_context": False, "compile_context": True}).varies,
    "seen": seen,
    "computations": cache.stats().computations,
    "memo_hits": cache.stats().memo_hits,
}))
"""


def run_with_stand_in_torch() -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", FAKE_TORCH], capture_output=True, text=True, timeout=60,
        check=True, cwd=Path(__file__).parent,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_runtime_settings_that_change_between_calls_change_the_key() -> None:
    report = run_with_stand_in_torch()
    assert report["varies"] is True and report["static_varies"] is False
    assert report["seen"] == [
        [1, False, "01"], [1, False, "01"],
        [1, True, "01"], [1, True, "01"],
        [1, False, "01"],  # back to the first settings: a memo hit, not a recompute
        [1, False, "02"], [1, False, "02"],
    ]
    assert report["computations"] == 3
    assert report["memo_hits"] == 4


NO_TORCH = """
import json, sys
sys.modules["torch"] = None  # as if not installed: find_spec refuses it
from redis_cache import context
everything = context.isolation_context(None)
print(json.dumps({
    "varies": context.runtime_varies(None),
    "stable": context.isolation_key(None) == context.isolation_key(None),
    "runtime": everything["runtime_context"],
    "none_differs": context.isolation_key({"runtime_context": False, "compile_context": False})
    != context.isolation_key(None),
}))
"""


def run(code: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
        check=False, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_without_torch_the_key_is_static_and_cached() -> None:
    report = run(NO_TORCH)
    assert report["varies"] is False and report["stable"] is True
    assert report["runtime"] == dict.fromkeys(context.RUNTIME_FORMS)
    assert report["none_differs"] is True


REAL_TORCH = """
import json, tempfile
from pathlib import Path
import torch
from redis_cache import context
from redis_cache.config import Settings
from redis_cache.interfaces import FastCache

cache = FastCache(Settings(dir=Path(tempfile.mkdtemp()), stats_interval=0))
calls = []

def kernel(x):
    calls.append((torch.are_deterministic_algorithms_enabled(),
                  torch._inductor.config.max_autotune))
    return x

recorded = cache.record()(kernel)
recorded(1); recorded(1)                      # compute, memo hit
torch.use_deterministic_algorithms(True)
recorded(1); recorded(1)                      # another key: compute, hit
torch.use_deterministic_algorithms(False)
recorded(1)                                   # the first key again: a hit
torch._inductor.config.max_autotune = not torch._inductor.config.max_autotune
recorded(1); recorded(1)                      # Inductor's digest changed: compute, hit
hit = cache.get(kernel, ((1,), {}))           # get() sees the same settings
keyer = context.IsolationKeyer(None)
print(json.dumps({
    "varies": keyer.varies,
    "calls": calls,
    "memo_hits": cache.stats().memo_hits,
    "computations": cache.stats().computations,
    "hit": hit is not None,
    "values": context.isolation_context(None)["runtime_context"],
}))
"""


@pytest.mark.torch
def test_real_torch_settings_that_flip_between_calls_change_the_key() -> None:
    require_module("torch")
    report = run(REAL_TORCH)
    assert report["varies"] is True
    assert report["calls"] == [[False, False], [True, False], [False, True]]
    assert report["computations"] == 3
    assert report["memo_hits"] == 5
    assert report["hit"] is True
    values = report["values"]
    assert isinstance(values, dict)
    assert values["torch_determinism_configs"] == {
        "torch.are_deterministic_algorithms_enabled": False,
        "torch.is_deterministic_algorithms_warn_only_enabled": False,
        "torch.utils.deterministic.fill_uninitialized_memory": True,
    }
    assert len(values["inductor_configs"]) == 32  # Inductor's own digest, in hex
