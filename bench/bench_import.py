"""``import redis_cache`` in a fresh interpreter, with ``import json`` as a floor.

    python -m bench.bench_import [--quick] [--out bench/results]

8. Each child times its own import with ``time.perf_counter_ns`` (interpreter start-up
   excluded; ``site`` has run); children importing ``json`` and ``redis_cache``
   alternate, about 20 of each (5 with ``--quick``). No ``REDIS_CACHE_*`` variable is
   set, bytecode caches are warm (one untimed import first). Target (issue 12): the
   median import of ``redis_cache`` <= 25 ms; the ratio to ``json`` is for reference.
   The modules the import loaded are listed in the JSON (``loaded``), to show what a
   lazy import could still defer.
"""

from __future__ import annotations

import subprocess
import sys

from bench.common import (
    ROOT,
    Options,
    Row,
    clean_env,
    command_line,
    compare_each,
    in_child,
    report,
    row_from_pair,
    save,
)

TARGET_MS = 25.0

_TIMED = """\
import time
t = time.perf_counter_ns()
import {module}
print((time.perf_counter_ns() - t) / 1e6)
"""

_LOADED = """\
import sys
before = set(sys.modules)
import redis_cache
print(" ".join(sorted(m.split(".")[0] for m in set(sys.modules) - before)))
"""


def run(opts: Options) -> dict[str, list[Row]]:
    env = clean_env()
    in_child("import redis_cache; print(0)", env=env)  # bytecode compiled, caches warm
    pair = compare_each(
        ("import json", lambda: in_child(_TIMED.format(module="json"), env=env)),
        ("import redis_cache", lambda: in_child(_TIMED.format(module="redis_cache"), env=env)),
        repeat=opts.n(21, 5),
        unit="ms",
    )
    row = row_from_pair(
        "import time, fresh interpreter",
        "import redis_cache",
        pair,
        note="target on the median import time of redis_cache; json is a floor",
    )
    row.target = TARGET_MS
    row.target_on = "candidate"
    done = subprocess.run(
        [sys.executable, "-c", _LOADED], capture_output=True, text=True, cwd=ROOT, env=env,
        timeout=60, check=True,
    )  # fmt: skip
    loaded = sorted(set(done.stdout.split()))
    rows = report("8. import redis_cache vs import json (fresh interpreters)", [row])
    print(f"  top-level packages the import loaded: {', '.join(loaded)}")
    save("import_time", {"rows": [r.to_json() for r in rows], "loaded": loaded}, opts.out)
    return {"import_time": rows}


if __name__ == "__main__":
    command_line(run, __doc__)
