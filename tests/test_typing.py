"""A user's editor sees the decorated function's own signature, and the whole exception tree.

Runs ``mypy --strict`` on small user programs: a correct one must pass, and each
wrong call must be reported where it is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import redis_cache
from redis_cache import exceptions

pytestmark = pytest.mark.slow

GOOD = """
from redis_cache import Hit, fcache, icache, ValueTooLargeError, RemoteUnavailableError

@icache.record()
def compile_kernel(op: str, m: int, n: int = 8) -> bytes:
    return op.encode() * m * n

blob: bytes = compile_kernel("matmul", 4, n=2)
hit: Hit[bytes] | None = fcache.get(compile_kernel, (("matmul", 4), {"n": 2}))
try:
    fcache.insert(compile_kernel, (("gelu", 1), {}), b"x")
except (ValueTooLargeError, RemoteUnavailableError):
    pass
"""

BAD = """
from redis_cache import fcache

@fcache.record()
def compile_kernel(op: str, m: int) -> bytes:
    return op.encode() * m

compile_kernel(4, "matmul")
text: str = compile_kernel("matmul", 4)
compile_kernel("matmul")
"""


def mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("mypy") is None and not (Path(sys.executable).parent / "mypy").exists():
        pytest.fail("mypy is not installed (the dev extra provides it)")
    program = tmp_path / "user_program.py"
    program.write_text(source)
    # Analyzed, not reported: as for a package installed in site-packages.
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\n[mypy-redis_cache.*]\nfollow_imports = silent\n")
    # An editable install is an import hook mypy cannot follow: point it at the package
    # (with its py.typed marker), as a wheel in site-packages would.
    package_root = Path(redis_cache.__file__).resolve().parents[1]
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--no-incremental",
         str(program)],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(package_root)},
    )  # fmt: skip


def test_a_correct_user_program_passes_mypy_strict(tmp_path: Path) -> None:
    done = mypy(tmp_path, GOOD)
    assert done.returncode == 0, done.stdout + done.stderr


def test_wrong_calls_of_a_recorded_function_are_reported(tmp_path: Path) -> None:
    done = mypy(tmp_path, BAD)
    assert done.returncode == 1, done.stdout + done.stderr
    reported = {line.split(":")[1] for line in done.stdout.splitlines() if ": error:" in line}
    assert reported == {"8", "9", "10"}, done.stdout


def test_every_documented_exception_is_importable_from_the_package() -> None:
    documented = {
        name for name, obj in vars(exceptions).items()
        if isinstance(obj, type) and issubclass(obj, exceptions.CacheError)
    }  # fmt: skip
    assert documented <= set(redis_cache.__all__)
    for name in documented:
        assert getattr(redis_cache, name) is getattr(exceptions, name)


def test_help_shows_what_record_get_insert_do() -> None:
    for method in ("record", "get", "insert", "lock"):
        doc = getattr(redis_cache.fcache, method).__doc__
        assert doc and len(doc.split()) > 8, method
