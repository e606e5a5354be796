"""The source distribution is complete: built, installed into a fresh venv, its tests run.

No network: the sdist is built without isolation (``build`` and ``setuptools`` come
with the test extra), and the fresh venv borrows this environment's third-party
packages through a ``.pth`` line (lines of a ``.pth`` add paths but activate none
of the ``.pth`` files found there, so an editable install of this checkout stays
out). The tests run from the unpacked sdist with its ``redis_cache/`` removed, so
they import the package that was installed from it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Fast tests that need the helpers an incomplete sdist lacked (tests/support,
# conftest.py, twin modules) and the files they check (docs/, deploy/, README.md).
SUBSET = [
    "tests/test_keys.py",
    "tests/test_codec.py",
    "tests/test_layer_contract.py",
    "tests/test_docs.py",
    "tests/test_cli_local.py",
    "tests/test_redis_layer.py",
    "tests/test_deploy.py",
]
IGNORED = shutil.ignore_patterns(
    ".git", "__pycache__", "*.egg-info", ".venv", ".mypy_cache", ".ruff_cache",
    ".pytest_cache", ".hypothesis", "build", "dist", "results",
)  # fmt: skip


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{args}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_metadata_and_readme_work_on_a_package_index() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'license = "BSD-3-Clause"' in pyproject
    assert "BSD 3-Clause License" in (ROOT / "LICENSE").read_text()
    assert '"Programming Language :: Python :: 3.10"' in pyproject
    # An index renders the README alone: a relative link there leads nowhere.
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(\s*([^)\s]+)", readme)
    links += re.findall(r"(?m)^\[[^\]]+\]:\s*(\S+)", readme)
    assert [link for link in links if not link.startswith("https://")] == []


@pytest.mark.slow
def test_the_sdist_installs_into_a_fresh_venv_and_its_tests_run(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=IGNORED)
    run(sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", tmp_path / "dist",
        cwd=source)  # fmt: skip
    [sdist] = (tmp_path / "dist").glob("redis_cache-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
        archive.extractall(tmp_path / "unpacked", filter="data")
    for required in ("LICENSE", "tests/conftest.py", "tests/support/servers.py",
                     "tests/support/helpers.py", "tests/twin_a.py", "docs/quickstart.md",
                     "deploy/compose.yaml", "bench/run_all.py",
                     "redis_cache/py.typed"):  # fmt: skip
        assert required in names, required
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    [unpacked] = (tmp_path / "unpacked").iterdir()

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                    cwd=tmp_path).strip())  # fmt: skip
    borrowed = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_borrowed_test_dependencies.pth").write_text("\n".join(sorted(borrowed)) + "\n")
    run(python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
        "--quiet", sdist, cwd=tmp_path)  # fmt: skip

    shutil.rmtree(unpacked / "redis_cache")  # the tests must use the installed package
    where = run(python, "-c", "import redis_cache; print(redis_cache.__file__)", cwd=unpacked)
    assert where.startswith(str(venv)), where
    assert "redis-cache" in run(venv / "bin" / "redis-cache", "--version", cwd=tmp_path)

    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_CACHE_")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    pytest_args = [python, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
    collected = run(*pytest_args, "--collect-only", "tests", cwd=unpacked, env=env)
    assert "error" not in collected.lower().split("\n")[-2], collected[-2000:]
    # Deselected: it checks that deploy/Dockerfile copies redis_cache/, removed here.
    deselect = (
        "tests/test_deploy.py::test_the_worker_dockerfile_builds_from_what_the_repository_has"
    )
    out = run(*pytest_args, "-m", "not slow", *SUBSET, "--deselect", deselect, cwd=unpacked,
              env=env)  # fmt: skip
    assert re.search(r"\d+ passed", out) and "failed" not in out, out[-2000:]


def test_import_loads_nothing_a_worker_may_never_use() -> None:
    """Every worker imports the package; settings, clients and codecs come on first use."""
    heavy = [
        "redis",
        "tenacity",
        "filelock",
        "msgpack",
        "zstandard",
        "xxhash",
        "platformdirs",
        "importlib.metadata",
        "dataclasses",  # imports inspect, ast, dis: ~8 ms of every worker's start
        "inspect",
        "redis_cache.config",
        "redis_cache.runtime",
        "redis_cache.codec",
        "redis_cache.keys",
        "redis_cache.locks",
        "redis_cache.connection",
    ]  # not pathlib or urllib: an editable install's import hook loads them itself
    probe = (
        "import sys, redis_cache; "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules)); "
        "print(type(redis_cache.icache).__name__, redis_cache.config.load().namespace)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_CACHE_")}
    env["REDIS_CACHE_NAMESPACE"] = "probe"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env
    ).stdout.splitlines()
    assert out == ["", "FastCache probe"]
