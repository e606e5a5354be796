"""The benchmark suite runs end to end (``python -m bench.run_all --quick``); no figure is judged.

It proves only that every benchmark runs and reports sane numbers: each JSON file is
written and every ratio in it is a positive finite number. Thresholds are for
``docs/benchmarks.md``, not for a test on a shared 2-core machine. Plots are drawn when
matplotlib (the ``bench`` extra) is installed; benchmarks 2 and 10 report "skipped"
where torch is not importable, which is fine here.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import require_binary

pytestmark = [pytest.mark.slow, pytest.mark.real_redis]

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = (
    "memo_hit",
    "torch_memo",
    "disk_hit",
    "remote_hit",
    "miss_insert",
    "prefetch",
    "roundtrips",
    "stampede",
    "memory",
    "import_time",
    "throughput",
    "torch_remote",
)
NEED_TORCH = ("torch_memo", "torch_remote")


def test_run_all_quick_writes_every_benchmark(tmp_path: Path) -> None:
    require_binary("redis-server")
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run_all", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert (out / "summary.md").read_text().startswith("## Results")
    ratios = 0
    for name in EXPECTED:
        path = out / f"{name}.json"
        assert path.exists(), f"{name}.json missing:\n{done.stdout[-3000:]}"
        data = json.loads(path.read_text())["data"]
        if name in NEED_TORCH and "skipped" in data:
            continue
        assert data["rows"], f"{name}: no rows"
        for row in data["rows"]:
            for field in ("ratio", "ratio_p10", "ratio_p90"):
                value = row[field]
                assert isinstance(value, (int, float)), (name, row["case"], field, value)
                assert math.isfinite(value) and value > 0, (name, row["case"], field, value)
            ratios += 1
    assert ratios >= 50
    if (out / "img").exists():  # matplotlib installed: every figure is a PNG
        pngs = list((out / "img").glob("*.png"))
        assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
