"""The stats publisher's thread: gone while a process forks, never leaked by close()."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from redis_cache.interfaces import FastCache
from redis_cache.layers.redis import namespace_prefix
from redis_cache.publisher import stats_key
from tests.support.helpers import make_settings
from tests.support.servers import RedisServer

ROOT = str(Path(__file__).resolve().parents[1])

# Registered before redis_cache is imported, this after-fork hook runs before the
# library's own: it sees the threads as they were when fork() happened (which is
# what Python 3.12+ counts for its DeprecationWarning).
FORK = """
import json, os, sys, threading
seen = {}
os.register_at_fork(after_in_parent=lambda: seen.setdefault(
    "at_fork", sorted(t.name for t in threading.enumerate())))
from pathlib import Path
from redis_cache.interfaces import FastCache
from tests.support.helpers import make_settings

cache = FastCache(make_settings(Path(sys.argv[1]), url=sys.argv[2], namespace=sys.argv[3],
                                stats_interval=0.05))
def compile_kernel(x):
    return (x, "kernel")

kernel = cache.record()(compile_kernel)
kernel(1)
seen["before"] = sorted(t.name for t in threading.enumerate())
pid = os.fork()
if pid == 0:
    kernel(2)
    cache.close()
    os._exit(0)
seen["after"] = sorted(t.name for t in threading.enumerate())
_, status = os.waitpid(pid, 0)
seen["child_status"] = status
kernel(3)
cache.close()
seen["closed"] = sorted(t.name for t in threading.enumerate())
print(json.dumps(seen))
"""


def test_no_publisher_thread_runs_while_the_process_forks(
    tmp_path: Path, redis_server: RedisServer, namespace: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", FORK, str(tmp_path), redis_server.url, namespace],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert "redis_cache-stats" in seen["before"]
    assert "redis_cache-stats" not in seen["at_fork"]
    assert seen["after"].count("redis_cache-stats") == 1  # the parent publishes again
    assert seen["child_status"] == 0
    assert "redis_cache-stats" not in seen["closed"]
    with redis_server.client() as client:
        counters = client.hgetall(stats_key(namespace_prefix(namespace)))
    assert counters[b"fcache.misses"] == b"3"  # parent 2, child 1, none twice or lost


def test_close_and_rebuild_cycles_leave_no_publisher_thread(
    tmp_path: Path, redis_server: RedisServer, namespace: str
) -> None:
    def publishers() -> int:
        return sum(t.name == "redis_cache-stats" for t in threading.enumerate())

    baseline = publishers()
    cache = FastCache(make_settings(tmp_path, url=redis_server.url, namespace=namespace,
                                    stats_interval=3600))  # fmt: skip

    def kernel(x: int) -> int:
        return x

    wrapped = cache.record()(kernel)
    for i in range(30):
        wrapped(i)  # builds the backend (and its publisher) anew after each close
        assert publishers() == baseline + 1
        cache.close()
    assert publishers() == baseline
    with redis_server.client() as client:
        counters = client.hgetall(stats_key(namespace_prefix(namespace)))
    assert counters[b"fcache.misses"] == b"30"
