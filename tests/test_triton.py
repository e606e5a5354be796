"""``redis_cache.triton:RemoteCacheBackend`` with the real Triton package and a real redis-server.

Triton resolves the backend from ``TRITON_REMOTE_CACHE_BACKEND`` itself (its knob checks
the class's name) and drives it through its own ``RemoteCacheManager``: ``put`` of a
file and of a group, ``get_file`` and ``get_group`` (a batched ``get``), materializing
what it reads in its cache directory. Two "machines" differ in ``TRITON_CACHE_DIR`` and
``REDIS_CACHE_DIR``. Then what is ours: signed entries only (a planted, unsigned
"cubin" never comes back), no secret means no cache, the GPU target and the host
platform in the key, oversize files kept local, a dead server is a miss.

Triton is required (the ``triton`` extra; CI installs it): these fail under
``CI=true`` without it. On a machine without a GPU, Triton's target is ``none``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import redis_cache.triton as triton_integration
from redis_cache import config
from redis_cache.blobs import IntegrationWarning
from redis_cache.codec import Codec
from redis_cache.triton import RemoteCacheBackend, gpu_target, host_platform
from tests.support.helpers import make_settings
from tests.support.servers import RedisServer, _skip_or_fail, free_port

pytestmark = [pytest.mark.torch, pytest.mark.real_redis]

SECRET = b"triton-fleet-secret-6b0e2d"
CUBIN = b"\x7fELF" + os.urandom(2000)
KEY = "4GQGYXUSDBKZVQ3UO7WBXUG3UWVI7ZCMGVVJBN2OJ7YULMFCAPTQ"


@pytest.fixture(scope="module")
def triton_cache() -> types.ModuleType:
    try:
        return importlib.import_module("triton.runtime.cache")
    except ImportError as exc:
        _skip_or_fail(f"triton is not importable ({exc}); pip install -e '.[triton]'")


@pytest.fixture
def settings(tmp_path: Path, redis_server: RedisServer, namespace: str) -> config.Settings:
    return make_settings(
        tmp_path / "machine-a" / "rc",
        url=redis_server.url,
        namespace=namespace,
        secret=SECRET,
        stats_interval=0,
    )


@pytest.fixture
def machine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, settings: config.Settings
) -> Iterator[Any]:
    """Switch this process to "machine" ``name``: Triton's and redis_cache's dirs, by env."""

    def switch(name: str) -> None:
        root = tmp_path / f"machine-{name}"
        monkeypatch.setenv("TRITON_CACHE_MANAGER", "triton.runtime.cache:RemoteCacheManager")
        monkeypatch.setenv("TRITON_REMOTE_CACHE_BACKEND", "redis_cache.triton:RemoteCacheBackend")
        monkeypatch.setenv("TRITON_CACHE_DIR", str(root / "triton"))
        monkeypatch.setenv("REDIS_CACHE_DIR", str(root / "rc"))
        monkeypatch.setenv("REDIS_CACHE_URL", str(settings.url))
        monkeypatch.setenv("REDIS_CACHE_NAMESPACE", settings.namespace)
        monkeypatch.setenv("REDIS_CACHE_SECRET", SECRET.decode())
        monkeypatch.setenv("REDIS_CACHE_STATS_INTERVAL", "0")
        config.reset()

    yield switch
    config.reset()


def test_triton_loads_and_drives_the_backend(triton_cache: Any, machine: Any) -> None:
    knobs = importlib.import_module("triton.knobs")
    machine("a")
    assert knobs.cache.remote_manager_class is RemoteCacheBackend  # Triton's own check passed
    writer = triton_cache.get_cache_manager("ab" * 32)
    assert type(writer).__name__ == "RemoteCacheManager"
    path = writer.put(CUBIN, "kernel.cubin", binary=True)
    assert Path(path).read_bytes() == CUBIN
    group = {
        "kernel.json": writer.put(b'{"name": "k"}', "kernel.json"),
        "launcher.so": writer.put(b"\x7fELF-launcher", "launcher.so"),
    }
    writer.put_group("kernel.json", group)

    machine("b")  # empty local directories: everything must come through Redis
    reader = triton_cache.get_cache_manager("ab" * 32)
    found = reader.get_file("kernel.cubin")
    assert found is not None and Path(found).read_bytes() == CUBIN
    assert str(os.environ["TRITON_CACHE_DIR"]) in found  # materialized on this machine
    files = reader.get_group("kernel.json")
    assert files is not None and sorted(files) == ["kernel.json", "launcher.so"]
    assert Path(files["launcher.so"]).read_bytes() == b"\x7fELF-launcher"
    assert reader.get_file("missing.cubin") is None
    assert triton_cache.get_cache_manager("cd" * 32).get_file("kernel.cubin") is None


def test_batched_get_returns_what_exists(settings: config.Settings, tmp_path: Path) -> None:
    backend = RemoteCacheBackend(KEY, settings=settings)
    backend.put("a.cubin", b"A")
    backend.put("b.json", b"{}")
    other = RemoteCacheBackend(KEY, settings=dataclasses.replace(settings, dir=tmp_path / "m2"))
    assert other.get(["a.cubin", "missing", "b.json"]) == {"a.cubin": b"A", "b.json": b"{}"}
    assert other.get([]) == {}


def test_gpu_target_and_host_platform_are_part_of_the_key(
    settings: config.Settings, tmp_path: Path
) -> None:
    RemoteCacheBackend(KEY, settings=settings, target="cuda:90").put("k.cubin", CUBIN)
    elsewhere = dataclasses.replace(settings, dir=tmp_path / "m2")
    assert RemoteCacheBackend(KEY, settings=elsewhere, target="cuda:90").get(["k.cubin"])
    assert RemoteCacheBackend(KEY, settings=elsewhere, target="cuda:80").get(["k.cubin"]) == {}
    other_host = RemoteCacheBackend(KEY, settings=elsewhere, target="cuda:90", host="macos-arm64")
    assert other_host.get(["k.cubin"]) == {}
    default = RemoteCacheBackend(KEY, settings=settings)
    assert (default.target, default.host) == (gpu_target(), host_platform())


def test_entries_are_signed_and_a_planted_binary_never_returns(
    settings: config.Settings, redis_server: RedisServer, tmp_path: Path
) -> None:
    RemoteCacheBackend(KEY, settings=settings).put("k.cubin", CUBIN)
    client = redis_server.client()
    (name,) = [
        n for n in client.scan_iter(f"*{settings.namespace}*") if b"triton.RemoteCacheBackend" in n
    ]
    digest = name.decode().rsplit("{", 1)[1].rstrip("}").encode()
    assert Codec(SECRET).decode(digest, client.get(name)) == CUBIN
    reader = RemoteCacheBackend(KEY, settings=dataclasses.replace(settings, dir=tmp_path / "r"))
    for forged in (Codec(None), Codec(b"someone-elses-secret-000")):
        client.set(name, forged.encode(digest, b"\x7fELF-trojan"))
        assert reader.get(["k.cubin"]) == {}
    client.set(name, Codec(SECRET).encode(digest, b"\x7fELF-ours"))  # control: ours is served
    assert reader.get(["k.cubin"]) == {"k.cubin": b"\x7fELF-ours"}


def test_without_a_secret_nothing_is_stored_or_served(
    settings: config.Settings, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(triton_integration, "_refusal_warned", False)
    unsigned = dataclasses.replace(settings, secret=None)
    with pytest.warns(IntegrationWarning, match="REDIS_CACHE_SECRET"):
        backend = RemoteCacheBackend(KEY, settings=unsigned)
    backend.put("k.cubin", CUBIN)
    assert backend.get(["k.cubin"]) == {}
    assert not [n for n in redis_server.client().scan_iter(f"*{settings.namespace}*")]


def test_oversize_files_stay_on_this_host(settings: config.Settings, tmp_path: Path) -> None:
    small = dataclasses.replace(settings, max_value_bytes=1024, compression="off")
    backend = RemoteCacheBackend(KEY, settings=small)
    with pytest.warns(IntegrationWarning, match="REDIS_CACHE_MAX_VALUE_BYTES=1024"):
        backend.put("big.cubin", CUBIN)
    assert backend.get(["big.cubin"]) == {"big.cubin": CUBIN}
    elsewhere = RemoteCacheBackend(KEY, settings=dataclasses.replace(small, dir=tmp_path / "m2"))
    assert elsewhere.get(["big.cubin"]) == {}


def test_a_dead_server_is_a_miss(tmp_path: Path) -> None:
    dead = make_settings(
        tmp_path / "rc",
        url=f"redis://127.0.0.1:{free_port()}/0",
        secret=SECRET,
        connect_timeout=0.2,
        stats_interval=0,
    )
    backend = RemoteCacheBackend(KEY, settings=dead)
    backend.put("k.cubin", CUBIN)  # kept on this host's disk
    assert backend.get(["k.cubin", "other"]) == {"k.cubin": CUBIN}
