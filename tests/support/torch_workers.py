"""Process bodies for the torch integration tests: each run is one "machine".

Run as ``python -m tests.support.torch_workers compile OUT.json`` from the repository
root, configured only by environment variables (the test gives each process its own
``TORCHINDUCTOR_CACHE_DIR``, ``REDIS_CACHE_DIR`` and ``TMPDIR``). The report says what
torch counted and which compiled ``.so`` files this machine's inductor cache holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SECRET = "torch-fleet-secret-5c1e9a07"


def require_torch() -> Any:
    """torch, or skip the test (fail it under ``CI=true``, where torch must be installed)."""
    try:
        import torch  # noqa: PLC0415 - heavy and optional
    except ImportError as exc:
        from tests.support.servers import _skip_or_fail  # noqa: PLC0415

        _skip_or_fail(f"torch is not importable ({exc}); pip install -e '.[torch]'")
    return torch


def machine_env(root: Path, **variables: str) -> dict[str, str]:
    """The environment of one "machine": its own inductor, redis_cache and temp directories.

    torch's own Redis settings point at a port nothing listens on, so a hit can only
    come from redis_cache.
    """
    dirs = {name: root / name for name in ("inductor", "redis_cache", "tmp")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    from tests.support.servers import free_port  # noqa: PLC0415

    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_CACHE_", "TORCH"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        TORCHINDUCTOR_CACHE_DIR=str(dirs["inductor"]),
        REDIS_CACHE_DIR=str(dirs["redis_cache"]),
        TMPDIR=str(dirs["tmp"]),
        TORCHINDUCTOR_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        REDIS_CACHE_STATS_INTERVAL="0",
    )
    env.update(variables)
    return env


def run_python(
    code: str, env: dict[str, str], timeout: float = 300, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """``python -c code`` (from the repository root); stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def warnings_in(stderr: str) -> list[str]:
    """The lines of ``stderr`` that are warnings raised by redis_cache."""
    return [line for line in stderr.splitlines() if "redis_cache" in line and "Warning:" in line]


def tiny(x: Any) -> Any:
    """The one function the end-to-end tests compile: small, so CPU compile stays short."""
    return (x.sin() * 2 + x.cos()).sum()


def shared_objects(root: str) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*.so"))


def compile_and_report(out: Path) -> None:
    started = time.monotonic()
    import torch  # noqa: PLC0415 - the environment decides how torch starts: import it here
    from torch._dynamo.utils import counters  # noqa: PLC0415
    from torch._inductor import config as inductor_config  # noqa: PLC0415

    import redis_cache.torch as integration  # noqa: PLC0415

    imported = time.monotonic()
    x = torch.arange(8, dtype=torch.float32, requires_grad=True)
    value = torch.compile(tiny)(x)
    value.backward()
    compiled = time.monotonic()
    cache_dir = os.environ["TORCHINDUCTOR_CACHE_DIR"]
    report = {
        "active": integration.active(),
        "fx_graph_remote_cache": inductor_config.fx_graph_remote_cache,
        "inductor": {k: int(v) for k, v in counters["inductor"].items()},
        "aot_autograd": {k: int(v) for k, v in counters["aot_autograd"].items()},
        "value": float(value.detach()),
        "grad": [float(g) for g in x.grad],
        "shared_objects": shared_objects(cache_dir),
        "import_seconds": imported - started,
        "compile_seconds": compiled - imported,
    }
    out.write_text(json.dumps(report))


if __name__ == "__main__":
    command, path = sys.argv[1], Path(sys.argv[2])
    if command != "compile":
        raise SystemExit(f"unknown command {command!r}")
    compile_and_report(path)
