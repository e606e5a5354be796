"""docs/quickstart.md step 3 runs as written: a server of its own, on a free port, answering."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.servers import require_binary
from tests.test_docs import split_code

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "docs" / "quickstart.md"


def step(title: str) -> str:
    """The first ``sh`` block after the heading that starts with ``title``."""
    text = QUICKSTART.read_text()
    section = text[text.index(f"## {title}") :]
    _, blocks = split_code(section)
    return next(source for language, source, _ in blocks if language == "sh")


def test_step_3_starts_its_own_server_and_step_4_points_at_it(tmp_path: Path) -> None:
    require_binary("redis-server")
    require_binary("redis-cli")
    script = step("3. Start a local Redis")
    assert "6379" not in script and "ping" in script
    export = next(line for line in step("4.").splitlines() if line.startswith("export "))
    # Step 3 as written, then what a reader checks, then cleanup: run in a fresh
    # directory (the server's working directory) with the server stopped at the end.
    probe = f"""set -e
{script}
{export}
echo "url=$REDIS_CACHE_URL"
redis-cli -p "$port" info server | grep '^tcp_port:'
redis-cli -p "$port" shutdown nosave || true
"""
    done = subprocess.run(
        ["bash", "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("REDIS_CACHE_")},
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.split()
    assert "PONG" in lines
    port = next(line for line in lines if line.startswith("tcp_port:")).split(":")[1]
    assert f"url=redis://127.0.0.1:{port}/0" in lines  # step 4 talks to step 3's server
