"""redis_cache.torch with the real torch 2.13: activation, keys, safety, sizes.

- Activation by environment alone, in fresh processes (torch reads its entry points
  once per process): nothing is imported while ``REDIS_CACHE_TORCH`` is unset; with it,
  the five caches get our backend and their settings are switched on; without usable
  settings, one warning and torch unchanged; an explicit torch setting wins.
- ``install()`` is idempotent, ``uninstall()`` puts everything back.
- Entries are torch's own keys under one callee, shared by every machine.
- A planted pickle goes through torch's real read path
  (``FxGraphCache.iterate_over_candidates``) and never runs unless signed with our
  secret (the positive control shows the path really unpickles).
- Oversize entries stay local with one warning; torch entries do not pile up in memory;
  a dead server costs misses, not errors.

torch is required: these tests fail under ``CI=true`` when it is missing.
"""

from __future__ import annotations

import base64
import dataclasses
import gc
import importlib
import json
import os
import pickle
import tracemalloc
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import redis_cache.torch as integration
from redis_cache import config, exceptions, runtime
from redis_cache.blobs import BlobStore, IntegrationWarning
from redis_cache.codec import Codec
from tests.support.helpers import exploit_envelope, make_settings
from tests.support.servers import RedisServer, free_port
from tests.support.torch_workers import (
    SECRET,
    machine_env,
    require_torch,
    run_python,
    warnings_in,
)

pytestmark = [pytest.mark.torch, pytest.mark.real_redis]

OTHER_SECRET = b"another-fleet-secret-91d2"
CACHE_CLASSES = (
    "RemoteFxGraphCache",
    "RemoteAOTAutogradCache",
    "RemoteAutotuneCache",
    "RemoteBundledAutotuneCache",
    "RemoteDynamoPGOCache",
)

# What a fresh process reports after `import torch` and importing the remote cache module.
PROBE = r"""
import json, sys
import torch
report = {
    "redis_cache_imported_by_torch": "redis_cache" in sys.modules,
    "entry_point_ran": "_redis_cache_autoload" in sys.modules,
    "hook_armed": any(type(f).__name__ == "_AfterImport" for f in sys.meta_path),
}
import torch._inductor.remote_cache as rc
import torch._inductor.config as ic, torch._functorch.config as fc, torch._dynamo.config as dc
report["overrides"] = {
    name: getattr(getattr(rc, name).backend_override_cls, "__qualname__", None)
    for name in CACHE_CLASSES
}
report["settings"] = {
    "fx_graph_remote_cache": ic.fx_graph_remote_cache,
    "autotune_remote_cache": ic.autotune_remote_cache,
    "bundled_autotune_remote_cache": ic.bundled_autotune_remote_cache,
    "enable_remote_autograd_cache": fc.enable_remote_autograd_cache,
    "automatic_dynamic_remote_pgo": dc.automatic_dynamic_remote_pgo,
}
report["loader_is_real"] = type(rc.__loader__).__name__ == "SourceFileLoader"
report["hook_left"] = any(type(f).__name__ == "_AfterImport" for f in sys.meta_path)
if "redis_cache.torch" in sys.modules:
    import redis_cache.torch as integration
    report["active"] = integration.active()
    report["bundled_usable"] = integration._bundled_autotune_usable()
print(json.dumps(report))
""".replace("CACHE_CLASSES", repr(CACHE_CLASSES))

UNSET = {
    "fx_graph_remote_cache": None,
    "autotune_remote_cache": None,
    "bundled_autotune_remote_cache": None,
    "enable_remote_autograd_cache": None,
    "automatic_dynamic_remote_pgo": None,
}


def probe(env: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    done = run_python(PROBE, env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1]), warnings_in(done.stderr)


@pytest.fixture(scope="module")
def torch_module() -> types.SimpleNamespace:
    """torch's modules this file reaches into (imported here: torch is optional)."""
    require_torch()
    return types.SimpleNamespace(
        rc=importlib.import_module("torch._inductor.remote_cache"),
        inductor_config=importlib.import_module("torch._inductor.config"),
        codecache=importlib.import_module("torch._inductor.codecache"),
    )


@pytest.fixture
def fleet_env(tmp_path: Path, redis_server: RedisServer, namespace: str) -> dict[str, str]:
    return machine_env(
        tmp_path / "machine",
        REDIS_CACHE_TORCH="1",
        REDIS_CACHE_URL=redis_server.url,
        REDIS_CACHE_SECRET=SECRET,
        REDIS_CACHE_NAMESPACE=namespace,
    )


# --------------------------------------------------------------------------- activation


def test_unset_variable_imports_nothing_and_changes_nothing(
    torch_module: Any, fleet_env: dict[str, str]
) -> None:
    env = dict(fleet_env)
    del env["REDIS_CACHE_TORCH"]
    report, warned = probe(env)
    assert report["entry_point_ran"], "torch did not call the torch.backends entry point"
    assert not report["redis_cache_imported_by_torch"]
    assert not report["hook_armed"]
    assert report["overrides"] == dict.fromkeys(CACHE_CLASSES)
    assert report["settings"] == UNSET
    assert warned == []


def test_environment_alone_switches_torch_caches_to_redis_cache(
    torch_module: Any, fleet_env: dict[str, str]
) -> None:
    report, warned = probe(fleet_env)
    assert warned == []
    assert report["active"]
    # The hook waits for torch's cache module; it leaves the loader and meta path clean.
    assert report["hook_armed"] and not report["hook_left"] and report["loader_is_real"]
    assert set(report["overrides"].values()) == {"_apply.<locals>.backend_override"}
    bundled = True if report["bundled_usable"] else None
    assert report["settings"] == {
        "fx_graph_remote_cache": True,
        "autotune_remote_cache": True,
        "bundled_autotune_remote_cache": bundled,  # needs a Triton GPU backend in 2.13
        "enable_remote_autograd_cache": True,
        "automatic_dynamic_remote_pgo": True,
    }


def test_an_explicit_torch_setting_wins(torch_module: Any, fleet_env: dict[str, str]) -> None:
    env = dict(fleet_env, TORCHINDUCTOR_FX_GRAPH_REMOTE_CACHE="0")
    report, _ = probe(env)
    assert report["active"]
    assert report["settings"]["fx_graph_remote_cache"] is False
    assert report["settings"]["enable_remote_autograd_cache"] is True


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"REDIS_CACHE_SECRET": None}, "REDIS_CACHE_SECRET"),
        ({"REDIS_CACHE_URL": None}, "REDIS_CACHE_URL"),
        ({"REDIS_CACHE_TORCH": "yes"}, "REDIS_CACHE_TORCH"),
        ({"REDIS_CACHE_NAMESPACE": "not a namespace!"}, "REDIS_CACHE_NAMESPACE"),
        ({"REDIS_CACHE_ENABLED": "0"}, "REDIS_CACHE_ENABLED"),
    ],
    ids=["no-secret", "no-server", "bad-flag", "bad-namespace", "disabled"],
)
def test_unusable_settings_warn_once_and_leave_torch_unchanged(
    torch_module: Any, fleet_env: dict[str, str], change: dict[str, str | None], named: str
) -> None:
    env = dict(fleet_env)
    for name, value in change.items():
        if value is None:
            env.pop(name)
        else:
            env[name] = value
    report, warned = probe(env)
    assert len(warned) == 1, warned
    assert named in warned[0] and "unchanged" in warned[0]
    assert SECRET not in warned[0]
    assert report["overrides"] == dict.fromkeys(CACHE_CLASSES)
    assert report["settings"] == UNSET
    assert not report["active"]


def test_a_broken_install_never_breaks_import_torch(
    torch_module: Any, fleet_env: dict[str, str], tmp_path: Path
) -> None:
    # A redis_cache that fails to import (a half-upgraded install) comes first on the path.
    broken = tmp_path / "broken" / "redis_cache"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('half-installed redis_cache')\n")
    env = dict(fleet_env, PYTHONPATH=os.pathsep.join([str(broken.parent), fleet_env["PYTHONPATH"]]))
    # Not from the repository root: python -c puts the working directory first on the path.
    done = run_python("import torch; print(torch.ones(2).sum().item())", env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "2.0"
    assert "half-installed redis_cache" in done.stderr and "unchanged" in done.stderr


def test_device_backend_autoload_off_means_no_activation(
    torch_module: Any, fleet_env: dict[str, str]
) -> None:
    report, warned = probe(dict(fleet_env, TORCH_DEVICE_BACKEND_AUTOLOAD="0"))
    assert not report["entry_point_ran"] and not report["redis_cache_imported_by_torch"]
    assert report["overrides"] == dict.fromkeys(CACHE_CLASSES)
    assert warned == []


# --------------------------------------------------------------------------- install()


@pytest.fixture
def settings(tmp_path: Path, redis_server: RedisServer, namespace: str) -> config.Settings:
    return make_settings(
        tmp_path / "rc",
        url=redis_server.url,
        namespace=namespace,
        secret=SECRET.encode(),
        stats_interval=0,
    )


@pytest.fixture
def installed(torch_module: Any, settings: config.Settings) -> Iterator[Any]:
    integration.install(settings)
    try:
        yield integration
    finally:
        integration.uninstall()


def test_install_is_idempotent_and_uninstall_restores(
    torch_module: Any, settings: config.Settings
) -> None:
    assert torch_module.inductor_config.fx_graph_remote_cache is None
    integration.install(settings)
    try:
        override = torch_module.rc.RemoteFxGraphCache.backend_override_cls
        integration.install(settings)
        assert torch_module.rc.RemoteFxGraphCache.backend_override_cls is override
        assert torch_module.rc.RemoteFxGraphCache("fx-graph-v1").backend is override()
        assert torch_module.inductor_config.fx_graph_remote_cache is True
    finally:
        integration.uninstall()
    assert not integration.active()
    assert torch_module.inductor_config.fx_graph_remote_cache is None
    for name in CACHE_CLASSES:
        assert getattr(torch_module.rc, name).backend_override_cls is None
        assert "backend_override_cls" not in vars(getattr(torch_module.rc, name))


def test_install_refuses_without_a_secret(torch_module: Any, settings: config.Settings) -> None:
    with pytest.raises(exceptions.InvalidSettingError, match="REDIS_CACHE_SECRET"):
        integration.install(dataclasses.replace(settings, secret=None))
    assert not integration.active()
    assert torch_module.rc.RemoteFxGraphCache.backend_override_cls is None


def test_a_torch_without_the_seam_is_refused(torch_module: Any) -> None:
    old_torch = types.ModuleType("torch._inductor.remote_cache")
    old_torch.RemoteCache = type("RemoteCache", (), {})  # type: ignore[attr-defined]
    with pytest.raises(integration.TorchIntegrationError, match="backend_override_cls"):
        integration._served_classes(old_torch)


def test_entries_are_torch_keys_under_one_callee_shared_by_machines(
    torch_module: Any,
    installed: Any,
    settings: config.Settings,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    key = "fxgraph-key-0123"
    torch_module.rc.RemoteFxGraphCache("fx-graph-v1").put(key, {"data": "abc", "time_taken_ms": 3})
    names = [k.decode() for k in redis_server.client().scan_iter(f"*{settings.namespace}*")]
    values = [n for n in names if "redis_cache.torch.remote_cache" in n]
    assert len(values) == 1, names
    # Another machine (empty disk, its own process state) finds it under torch's key alone.
    other = BlobStore(installed.ENTRIES, dataclasses.replace(settings, dir=tmp_path / "m2"),
                      host="torch")  # fmt: skip
    stored = other.get((f"pt2:fx-graph-v1::{key}:c1",))
    assert stored is not None and json.loads(stored) == {"data": "abc", "time_taken_ms": 3}
    other.close()


# --------------------------------------------------------------------------- planted pickles


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (open, (str(self.marker), "w"))


def torch_entry(marker: Path) -> bytes:
    """What torch's FX graph cache reads: JSON with a base64 pickle it will unpickle."""
    content = base64.b64encode(pickle.dumps(Exploit(marker))).decode()
    return json.dumps({"data": content, "time_taken_ms": 1}).encode()


def plant(
    redis_server: RedisServer, settings: config.Settings, tmp_path: Path, key: str, blob: Any
) -> None:
    """Replace the Redis value of torch's entry ``key`` with ``blob(digest)``."""
    staging_settings = dataclasses.replace(settings, dir=tmp_path / "staging")
    staging = BlobStore(integration.ENTRIES, staging_settings, host="torch")
    assert staging.put((key,), b"placeholder")
    staging.close()
    client = redis_server.client()
    (name,) = [k for k in client.scan_iter(f"*{settings.namespace}*") if b"torch.remote_cache" in k]
    digest = name.decode().rsplit("{", 1)[1].rstrip("}")
    client.set(name, blob(digest.encode()))


PLANTED = {
    "signed-by-us (control)": lambda marker: (
        lambda kid: Codec(SECRET.encode()).encode(kid, torch_entry(marker))
    ),
    "unsigned": lambda marker: lambda kid: Codec(None).encode(kid, torch_entry(marker)),
    "signed-by-another-fleet": lambda marker: (
        lambda kid: Codec(OTHER_SECRET).encode(kid, torch_entry(marker))
    ),
    "unsigned-pickle-envelope": lambda marker: lambda kid: exploit_envelope(kid, marker),
    "pickle-envelope-other-key": lambda marker: (
        lambda kid: exploit_envelope(kid, marker, signed_with=OTHER_SECRET)
    ),
}


@pytest.mark.parametrize("planted", list(PLANTED))
def test_planted_pickle_never_reaches_torchs_unpickler(
    torch_module: Any,
    settings: config.Settings,
    redis_server: RedisServer,
    tmp_path: Path,
    planted: str,
) -> None:
    marker = tmp_path / "pwned"
    torch_key = "fplantedkey"
    plant(redis_server, settings, tmp_path, f"pt2:fx-graph-v1::{torch_key}:c1",
          PLANTED[planted](marker))  # fmt: skip
    # A fresh machine: nothing local, so the read goes to Redis through torch's code.
    integration.install(dataclasses.replace(settings, dir=tmp_path / "reader"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = list(
                torch_module.codecache.FxGraphCache.iterate_over_candidates(
                    False, torch_module.codecache.FxGraphCache.get_remote_cache(), torch_key
                )
            )
    except Exception:  # torch may fail after unpickling the exploit: the marker tells
        loaded = []
    finally:
        integration.uninstall()
    if planted == "signed-by-us (control)":
        # The path really unpickles what a valid entry holds: the test can fail.
        assert marker.exists()
        assert len(loaded) == 1
    else:
        assert not marker.exists(), "a planted pickle ran"
        assert loaded == []


# --------------------------------------------------------------------------- sizes, memory


def test_oversize_entries_stay_local_with_one_warning(
    torch_module: Any,
    installed: Any,
    settings: config.Settings,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    installed.uninstall()
    small = dataclasses.replace(settings, max_value_bytes=64 * 1024, compression="off")
    installed.install(small)
    cache = torch_module.rc.RemoteFxGraphCache("fx-graph-v1")
    big = {"data": base64.b64encode(os.urandom(200_000)).decode()}
    with pytest.warns(IntegrationWarning, match="REDIS_CACHE_MAX_VALUE_BYTES=65536") as caught:
        cache.put("big-1", big)
        cache.put("big-2", dict(big, n=2))
    assert len([w for w in caught if w.category is IntegrationWarning]) == 1
    assert cache.get("big-1") == big  # this machine: from its disk layer
    client = redis_server.client()
    assert not [k for k in client.scan_iter(f"*{settings.namespace}*") if b"torch" in k]
    other = BlobStore(installed.ENTRIES, dataclasses.replace(small, dir=tmp_path / "m2"),
                      host="torch")  # fmt: skip
    assert other.get(("pt2:fx-graph-v1::big-1:c1",)) is None  # never shared
    other.close()


def test_torch_entries_do_not_pile_up_in_memory(torch_module: Any, installed: Any) -> None:
    cache = torch_module.rc.RemoteFxGraphCache("fx-graph-v1")
    entry_bytes = 2 * 1024 * 1024
    keys = [f"k{i}" for i in range(12)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for key in keys:  # each entry is built, stored and dropped here
            cache.put(key, {"data": os.urandom(entry_bytes // 2).hex()})
        for _ in range(3):
            for key in keys:
                assert cache.get(key) is not None
        # Disk copies wait (bounded) for an idle moment; write them as exit would, so
        # that what is measured is what stays for good.
        runtime._flush_at_exit()
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # 12 puts and 36 reads of 2 MiB entries: only a little bookkeeping may stay behind.
    assert kept < entry_bytes, f"{kept / 2**20:.1f} MiB stayed in memory after puts and gets"


def test_a_dead_server_costs_misses_not_errors(torch_module: Any, tmp_path: Path) -> None:
    dead = make_settings(
        tmp_path / "rc",
        url=f"redis://127.0.0.1:{free_port()}/0",
        secret=SECRET.encode(),
        stats_interval=0,
        connect_timeout=0.2,
    )
    integration.install(dead)
    try:
        cache = torch_module.rc.RemoteFxGraphCache("fx-graph-v1")
        cache.put("k", {"data": "x"})  # no exception: kept on this machine's disk
        assert cache.get("k") == {"data": "x"}
        assert cache.get("missing") is None
    finally:
        integration.uninstall()
