"""Isolation context: runtime settings that change between calls change the key.

CI has no torch, so a stand-in ``torch`` module (just the attributes the runtime
forms read) is installed in a subprocess; that is enough to drive the code path
torch users take: runtime forms vary, the memo fast path keys on them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from redis_cache import context

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


def test_without_torch_the_key_is_static_and_cached() -> None:
    assert context.runtime_varies(None) is False
    assert context.isolation_key(None) == context.isolation_key(None)
    everything = context.isolation_context(None)
    assert set(everything["runtime_context"]) == set(context.RUNTIME_FORMS)
    assert all(v is None for v in everything["runtime_context"].values())
    none = context.isolation_key({"runtime_context": False, "compile_context": False})
    assert none != context.isolation_key(None)
