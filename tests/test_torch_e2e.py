"""Two machines share torch.compile results through a real redis-server, by environment alone.

Two processes stand for two machines: each has its own ``TORCHINDUCTOR_CACHE_DIR``,
``REDIS_CACHE_DIR`` and ``TMPDIR``, and torch's own Redis settings point at a port
nothing listens on. Both are configured only by environment variables
(``REDIS_CACHE_TORCH=1`` and the usual ``REDIS_CACHE_*``); neither calls redis_cache.
The first compiles one tiny function (forward and backward) with ``torch.compile``;
the second must get every FX graph from Redis: ``fxgraph_cache_hit >= 1`` and
``fxgraph_cache_miss == 0`` in ``torch._dynamo.utils.counters["inductor"]``.

The compiled work is shared by every test here (one module-scoped pair of runs, about
a minute on two cores). torch is required: these fail under ``CI=true`` without it.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from redis_cache import exceptions
from redis_cache.codec import Codec
from tests.support.servers import RedisServer
from tests.support.torch_workers import ROOT, SECRET, machine_env, require_torch

pytestmark = [pytest.mark.torch, pytest.mark.slow, pytest.mark.real_redis]


@dataclass
class Fleet:
    namespace: str
    first: dict[str, Any]
    second: dict[str, Any]
    server: RedisServer


def run_machine(root: Path, server: RedisServer, namespace: str) -> dict[str, Any]:
    env = machine_env(
        root,
        REDIS_CACHE_TORCH="1",
        REDIS_CACHE_URL=server.url,
        REDIS_CACHE_SECRET=SECRET,
        REDIS_CACHE_NAMESPACE=namespace,
    )
    out = root / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.torch_workers", "compile", str(out)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Warning: redis_cache" not in done.stderr, done.stderr[-4000:]
    report: dict[str, Any] = json.loads(out.read_text())
    return report


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Fleet:
    require_torch()
    root = tmp_path_factory.mktemp("fleet")
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    first = run_machine(root / "machine-a", redis_server, namespace)
    second = run_machine(root / "machine-b", redis_server, namespace)
    return Fleet(namespace, first, second, redis_server)


def stored_entries(fleet: Fleet) -> dict[str, bytes]:
    """Every Redis value of the namespace, by key name."""
    client = fleet.server.client()
    names = [n for n in client.scan_iter(f"redis_cache:*:{fleet.namespace}:*")]
    return {n.decode(): client.get(n) for n in names if client.type(n) == b"string"}


def test_the_first_machine_compiles_and_stores(fleet: Fleet) -> None:
    assert fleet.first["active"] and fleet.first["fx_graph_remote_cache"] is True
    assert fleet.first["inductor"].get("fxgraph_cache_miss", 0) >= 1
    assert fleet.first["inductor"].get("fxgraph_cache_hit", 0) == 0
    assert fleet.first["aot_autograd"].get("autograd_cache_saved", 0) >= 1


def test_the_second_machine_gets_every_graph_from_redis(fleet: Fleet) -> None:
    inductor = fleet.second["inductor"]
    assert inductor.get("fxgraph_cache_hit", 0) >= 1, inductor
    assert inductor.get("fxgraph_cache_miss", 0) == 0, inductor
    autograd = fleet.second["aot_autograd"]
    assert autograd.get("autograd_cache_hit", 0) >= 1, autograd
    assert autograd.get("autograd_cache_miss", 0) == 0, autograd


def test_both_machines_compute_the_same(fleet: Fleet) -> None:
    assert fleet.second["value"] == fleet.first["value"]
    assert fleet.second["grad"] == fleet.first["grad"]


def test_entries_are_signed_under_torchs_keys(fleet: Fleet) -> None:
    entries = {n: v for n, v in stored_entries(fleet).items() if ":fcache:" in n}
    assert entries
    for name, blob in entries.items():
        assert ":fcache:redis_cache.torch.remote_cache:{" in name, name
        digest = name.rsplit("{", 1)[1].rstrip("}").encode()
        assert isinstance(Codec(SECRET.encode()).decode(digest, blob), bytes)
        with pytest.raises(exceptions.UnverifiedEntryError):
            Codec(None).decode(digest, blob)


def test_on_cpu_a_remote_hit_still_runs_the_cpp_compiler(fleet: Fleet) -> None:
    """What docs/torch.md says: the FX entry carries C++ source, not the compiled ``.so``."""
    payloads = []
    for name, blob in stored_entries(fleet).items():
        if ":fcache:" not in name:
            continue
        digest = name.rsplit("{", 1)[1].rstrip("}").encode()
        entry = json.loads(Codec(SECRET.encode()).decode(digest, blob))  # type: ignore[arg-type]
        if isinstance(entry, dict) and isinstance(entry.get("data"), str):
            payloads.append(base64.b64decode(entry["data"]))
    assert payloads
    assert not any(b"\x7fELF" in p for p in payloads), "an entry carries a shared object"
    # The second machine started with an empty inductor cache and hit every graph, yet it
    # holds compiled kernels: g++ built them there.
    assert fleet.second["shared_objects"], "no .so was compiled on the second machine"
