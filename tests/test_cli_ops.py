"""``redis-cache doctor|stats|dump|load|clear``, run as real processes against real servers."""

from __future__ import annotations

import json
import multiprocessing
import os
import pty
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from redis_cache import dumpfile
from redis_cache.interfaces import FastCache
from redis_cache.layers.redis import namespace_prefix
from redis_cache.ops import KeyName, glob_escape, parse_key
from redis_cache.publisher import stats_key
from tests.support import helpers as support
from tests.support.helpers import make_settings
from tests.support.servers import RedisClusterHandle, RedisServer, TLSMaterial, free_port

ROOT = str(Path(__file__).resolve().parents[1])
CALLEE = "tests.support.helpers.compile_rich"
STATUSES = ("ok", "FAIL", "warn", "skip")

# Calls helpers.compile_rich(i) for i < N through redis_cache.<kind>; prints values, stats.
RECORD = """
import json, sys
import redis_cache
from tests.support import helpers as support
cache = getattr(redis_cache, sys.argv[1])
fn = cache.record()(getattr(support, sys.argv[3] if len(sys.argv) > 3 else "compile_rich"))
values = [support.describe(fn(i)) for i in range(int(sys.argv[2]))]
stats = cache.stats().as_dict()
cache.close()
print(json.dumps({"values": values, "stats": stats}))
"""

# Strict prepopulated replay: N known keys from the dump, then one key nobody recorded.
REPLAY = """
import json, sys
import redis_cache
from tests.support import helpers as support
from redis_cache import exceptions
fn = redis_cache.dcache.record()(support.compile_rich)
n = int(sys.argv[1])
values = [support.describe(fn(i)) for i in range(n)]
try:
    fn(n + 1000)
    missing = "computed"
except exceptions.StrictDeterministicCachingKeyNotFoundError:
    missing = "raised"
print(json.dumps({"values": values, "missing": missing}))
"""


# --------------------------------------------------------------------------- helpers


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_CACHE_")}
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str], stdin: Any = subprocess.DEVNULL
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "redis_cache", *args], capture_output=True, text=True,
        env=env, stdin=stdin, timeout=120, check=False,
    )  # fmt: skip


def run_python(code: str, *args: str, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
        cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def record(env: dict[str, str], kind: str, n: int, fn: str = "compile_rich") -> dict[str, Any]:
    return run_python(RECORD, kind, str(n), fn, env=env)


def expected_values(n: int) -> list[Any]:
    return json.loads(json.dumps([support.describe(support.rich_value(i)) for i in range(n)]))


def namespace_keys(client: Any, namespace: str) -> list[bytes]:
    return sorted(client.scan_iter(match=namespace_prefix(namespace) + "*", count=1000))


def doctor_lines(stdout: str) -> dict[str, str]:
    """``{check name: status}`` from doctor's text output."""
    lines = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in STATUSES:
            lines[parts[1]] = parts[0]
    return lines


@pytest.fixture
def env(tmp_cache_dir: Path, namespace: str) -> dict[str, str]:
    return clean_env(REDIS_CACHE_DIR=str(tmp_cache_dir), REDIS_CACHE_NAMESPACE=namespace)


@pytest.fixture
def server_env(env: dict[str, str], redis_server: RedisServer) -> dict[str, str]:
    return {**env, "REDIS_CACHE_URL": redis_server.url}


@pytest.fixture
def second_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


# --------------------------------------------------------------------------- shape


def test_every_subcommand_has_help() -> None:
    top = run_cli("--help", env=clean_env())
    assert top.returncode == 0
    for command in ("demo", "doctor", "stats", "dump", "load", "clear", "prune"):
        assert command in top.stdout
        sub = run_cli(command, "--help", env=clean_env())
        assert sub.returncode == 0, sub.stderr
        assert "usage: redis-cache" in sub.stdout
    assert "keeps the expiry" in " ".join(run_cli("load", "--help", env=clean_env()).stdout.split())


def test_operations_without_a_remote_layer_are_usage_errors(
    env: dict[str, str], tmp_path: Path
) -> None:
    dump = str(tmp_path / "x.dump")
    for args in (("dump", dump), ("load", dump), ("clear", "--yes")):
        done = run_cli(*args, env=env)
        assert done.returncode == 2, (args, done.stderr)
        assert "REDIS_CACHE_URL" in done.stderr
        assert "Traceback" not in done.stderr


def test_bad_settings_are_configuration_errors(server_env: dict[str, str]) -> None:
    done = run_cli("stats", env={**server_env, "REDIS_CACHE_LOCK_TIMEOUT": "later"})
    assert done.returncode == 2
    assert "REDIS_CACHE_LOCK_TIMEOUT" in done.stderr
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------- doctor


def test_doctor_without_a_server_says_memo_and_disk_only(env: dict[str, str]) -> None:
    done = run_cli("doctor", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "memo + disk only" in done.stdout
    lines = doctor_lines(done.stdout)
    assert lines["settings"] == "ok"
    assert lines["disk"] == "ok"
    assert lines["remote"] == "skip"


def test_doctor_fails_on_bad_settings_without_traceback(env: dict[str, str]) -> None:
    done = run_cli("doctor", env={**env, "REDIS_CACHE_LOCK_TIMEOUT": "soon"})
    assert done.returncode == 1
    assert doctor_lines(done.stdout) == {"settings": "FAIL"}
    assert "REDIS_CACHE_LOCK_TIMEOUT" in done.stdout
    # A bad deterministic-only variable fails doctor when workers run dcache.
    bad = {**env, "REDIS_CACHE_DETERMINISTIC": "1", "REDIS_CACHE_STRICT": "sometimes"}
    done = run_cli("doctor", env=bad)
    assert done.returncode == 1
    assert doctor_lines(done.stdout)["settings"] == "FAIL"
    assert "Traceback" not in done.stdout + done.stderr


def test_doctor_fails_on_an_unwritable_disk_directory(env: dict[str, str], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    done = run_cli("doctor", env={**env, "REDIS_CACHE_DIR": str(blocker / "cache")})
    assert done.returncode == 1
    assert doctor_lines(done.stdout)["disk"] == "FAIL"


def test_doctor_on_a_healthy_server(server_env: dict[str, str], redis_server: RedisServer) -> None:
    done = run_cli("doctor", env=server_env)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = doctor_lines(done.stdout)
    expected = {"settings", "credentials", "secret", "disk", "remote", "reachable", "tls",
                "role", "eviction", "persistence", "replicas", "acl", "lease",
                "max-value"}  # fmt: skip
    assert set(lines) == expected
    assert all(status in ("ok", "skip", "warn") for status in lines.values()), done.stdout
    for name in ("reachable", "role", "eviction", "acl", "lease", "max-value"):
        assert lines[name] == "ok", done.stdout
    # The probes clean up after themselves.
    with redis_server.client() as client:
        assert namespace_keys(client, server_env["REDIS_CACHE_NAMESPACE"]) == []


def test_doctor_json_parses(server_env: dict[str, str]) -> None:
    done = run_cli("doctor", "--json", env=server_env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert {c["name"] for c in report["checks"]} >= {"reachable", "eviction", "acl"}
    for check in report["checks"]:
        assert set(check) == {"name", "status", "detail"}
        assert check["status"] in STATUSES


def test_doctor_fails_allkeys_eviction_under_global_determinism(env: dict[str, str]) -> None:
    with RedisServer(config=["maxmemory-policy allkeys-lru"]) as server:
        deterministic = {**env, "REDIS_CACHE_URL": server.url, "REDIS_CACHE_DETERMINISTIC": "1"}
        done = run_cli("doctor", env=deterministic)
        assert done.returncode == 1, done.stdout
        eviction = [line for line in done.stdout.splitlines() if " eviction " in line]
        assert len(eviction) == 1 and eviction[0].startswith("FAIL"), done.stdout
        assert "allkeys-lru" in eviction[0]
        # fcache may live with an evicting server: a warning, not a failure.
        relaxed = run_cli("doctor", env={**env, "REDIS_CACHE_URL": server.url})
        assert relaxed.returncode == 0, relaxed.stdout
        assert doctor_lines(relaxed.stdout)["eviction"] == "warn"


def test_doctor_on_a_dead_server_fails_without_traceback(env: dict[str, str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    done = run_cli("doctor", env={**env, "REDIS_CACHE_URL": url})
    assert done.returncode == 1
    lines = doctor_lines(done.stdout)
    assert lines["reachable"] == "FAIL"
    assert lines["acl"] == "skip"
    reachable = next(line for line in done.stdout.splitlines() if " reachable " in line)
    assert "ConnectionError" in reachable and url in reachable
    assert "Traceback" not in done.stdout + done.stderr


def test_doctor_with_a_wrong_password_fails_and_never_prints_it(
    env: dict[str, str], tmp_path: Path
) -> None:
    wrong = "wrong-battery-staple-42"
    dump = tmp_path / "x.dump"
    with RedisServer(password="correct-horse-17") as server:
        url = f"redis://:{wrong}@127.0.0.1:{server.port}/0"
        bad = {**env, "REDIS_CACHE_URL": url}
        for args in (("doctor",), ("doctor", "--json"), ("stats",), ("dump", str(dump))):
            done = run_cli(*args, env=bad)
            assert done.returncode == 1, (args, done.stdout, done.stderr)
            assert wrong not in done.stdout + done.stderr
            assert "Traceback" not in done.stdout + done.stderr
        assert [p for p in tmp_path.iterdir() if "x.dump" in p.name] == []  # not even a temp
        report = json.loads(run_cli("doctor", "--json", env=bad).stdout)
        reachable = next(c for c in report["checks"] if c["name"] == "reachable")
        assert reachable["status"] == "FAIL"
        assert "AuthenticationError" in reachable["detail"]


def test_doctor_names_missing_acl_rights(env: dict[str, str]) -> None:
    acl = ["user worker on >worker-pw-1 ~redis_cache:* +@all -eval -evalsha"]
    with RedisServer(acl=acl) as server:
        url = f"redis://worker:worker-pw-1@127.0.0.1:{server.port}/0"
        done = run_cli("doctor", env={**env, "REDIS_CACHE_URL": url})
    assert done.returncode == 1, done.stdout
    acl_line = next(line for line in done.stdout.splitlines() if " acl " in line)
    assert acl_line.startswith("FAIL")
    assert "EVAL" in acl_line and "SET (" not in acl_line
    assert "worker-pw-1" not in done.stdout + done.stderr


def test_doctor_reports_tls_and_certificate_failures(
    env: dict[str, str], tls_redis_server: RedisServer, tls_material: TLSMaterial
) -> None:
    tls = {**env, "REDIS_CACHE_URL": tls_redis_server.url}
    trusted = run_cli("doctor", env={**tls, "REDIS_CACHE_TLS_CA_FILE": str(tls_material.ca_cert)})
    assert trusted.returncode == 0, trusted.stdout
    assert doctor_lines(trusted.stdout)["tls"] == "ok"
    # Without our CA the system trust store cannot verify the test certificate.
    untrusted = run_cli("doctor", env=tls)
    assert untrusted.returncode == 1
    assert doctor_lines(untrusted.stdout)["tls"] == "FAIL", untrusted.stdout
    assert "Traceback" not in untrusted.stdout + untrusted.stderr


# --------------------------------------------------------------------------- stats


def test_stats_shows_entries_bytes_callees_and_published_counters(
    server_env: dict[str, str],
) -> None:
    n = 4
    worker = record({**server_env, "REDIS_CACHE_STATS_INTERVAL": "0.2"}, "fcache", n)
    assert worker["stats"]["computations"] == n
    done = run_cli("stats", "--json", env=server_env)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["entries"] == n
    assert stats["bytes"] > 0
    assert stats["callees"][CALLEE]["entries"] == n
    assert stats["callees"][CALLEE]["bytes"] == stats["bytes"]
    assert stats["counters"]["fcache"]["misses"] >= n
    assert stats["counters"]["fcache"]["inserts"] >= n
    text = run_cli("stats", env=server_env)
    assert text.returncode == 0
    assert CALLEE in text.stdout and f"{n} entries" in text.stdout


def test_stats_ignores_locks_signals_and_foreign_keys(
    server_env: dict[str, str], redis_server: RedisServer
) -> None:
    record(server_env, "fcache", 2)
    prefix = namespace_prefix(server_env["REDIS_CACHE_NAMESPACE"])
    with redis_server.client() as client:
        value_key = next(k for k in namespace_keys(client, server_env["REDIS_CACHE_NAMESPACE"])
                         if k.endswith(b"}"))  # fmt: skip
        client.set(value_key + b":lock", b"token:1", px=60_000)
        client.set(value_key + b":fence", b"1", px=60_000)
        client.rpush(value_key + b":signal", b"1")
        client.set(prefix + "!doctor:left-over", b"x", px=60_000)
        client.set(prefix[:-1] + "x:foo:{abc}", b"x", px=60_000)  # another namespace
    stats = json.loads(run_cli("stats", "--json", env=server_env).stdout)
    assert stats["entries"] == 2
    assert list(stats["callees"]) == [CALLEE]


# --------------------------------------------------------------------------- dump, replay


def test_dump_then_strict_prepopulated_replay_without_the_server(
    env: dict[str, str], fresh_redis_server: RedisServer, tmp_path: Path
) -> None:
    n = 5
    recording = {**env, "REDIS_CACHE_URL": fresh_redis_server.url, "REDIS_CACHE_DETERMINISTIC": "1"}
    recorded = record(recording, "dcache", n)
    assert recorded["stats"]["computations"] == n
    dump = tmp_path / "entries.dump"
    done = run_cli("dump", str(dump), env=recording)
    assert done.returncode == 0, done.stderr
    assert f"dumped {n} entries" in done.stdout
    assert done.stderr == ""  # no progress bar when stderr is not a terminal
    fresh_redis_server.kill()

    ledger = tmp_path / "ledger"
    replay = {**env, "REDIS_CACHE_DETERMINISTIC": "1", "REDIS_CACHE_STRICT": "prepopulated",
              "REDIS_CACHE_PREPOPULATE": str(dump), support.LEDGER_ENV: str(ledger)}  # fmt: skip
    for url in (fresh_redis_server.url, None):  # the dead server, then no remote layer at all
        run_env = dict(replay, REDIS_CACHE_DIR=str(tmp_path / f"disk-{url is None}"))
        if url is not None:
            run_env["REDIS_CACHE_URL"] = url
        result = run_python(REPLAY, str(n), env=run_env)
        assert result["values"] == expected_values(n)
        assert result["missing"] == "raised"
    assert support.computations(ledger) == []


# --------------------------------------------------------------------------- dump, load


def test_dump_load_into_a_second_server_serves_remote_hits(
    env: dict[str, str], fresh_redis_server: RedisServer, second_server: RedisServer,
    tmp_path: Path,
) -> None:  # fmt: skip
    n = 6
    first = {**env, "REDIS_CACHE_URL": fresh_redis_server.url}
    second = {**env, "REDIS_CACHE_URL": second_server.url}
    record(first, "fcache", n)
    dump = tmp_path / "entries.dump"
    assert run_cli("dump", str(dump), env=first).returncode == 0

    with second_server.client() as client:
        for name, data in (("truncated", dump.read_bytes()[:-3]), ("foreign", os.urandom(4096))):
            bad = tmp_path / f"{name}.dump"
            bad.write_bytes(data)
            done = run_cli("load", str(bad), env=second)
            assert done.returncode == 1, (name, done.stdout, done.stderr)
            assert "nothing was loaded" in done.stderr
            assert "Traceback" not in done.stderr
            assert client.dbsize() == 0

        done = run_cli("load", str(dump), env=second)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"loaded {n}, skipped 0 existing, 0 oversize, 0 expired"
        loaded = namespace_keys(client, env["REDIS_CACHE_NAMESPACE"])
        assert len(loaded) == n
        assert all(client.ttl(k) == -1 for k in loaded)  # written without a TTL: none now
        again = run_cli("load", str(dump), env=second)
        assert again.stdout.strip() == f"loaded 0, skipped {n} existing, 0 oversize, 0 expired"

    hits = record({**second, "REDIS_CACHE_DIR": str(tmp_path / "fresh-disk")}, "fcache", n)
    assert hits["values"] == expected_values(n)
    assert hits["stats"]["remote_hits"] == n
    assert hits["stats"]["computations"] == 0


def test_load_skips_oversize_entries_and_is_refused_read_only(
    server_env: dict[str, str], redis_server: RedisServer, tmp_path: Path
) -> None:
    record(server_env, "fcache", 3)
    dump = tmp_path / "entries.dump"
    assert run_cli("dump", str(dump), env=server_env).returncode == 0
    target = {**server_env, "REDIS_CACHE_NAMESPACE": server_env["REDIS_CACHE_NAMESPACE"] + "-b"}
    refused = run_cli("load", str(dump), env={**target, "REDIS_CACHE_READ_ONLY": "1"})
    assert refused.returncode == 2
    assert "REDIS_CACHE_READ_ONLY" in refused.stderr
    done = run_cli("load", str(dump), env={**target, "REDIS_CACHE_MAX_VALUE_BYTES": "20"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "loaded 0, skipped 0 existing, 3 oversize, 0 expired"
    with redis_server.client() as client:
        assert namespace_keys(client, target["REDIS_CACHE_NAMESPACE"]) == []


# --------------------------------------------------------------------------- clear


def test_clear_deletes_only_what_it_is_asked_to(
    env: dict[str, str], fresh_redis_server: RedisServer
) -> None:
    ns = env["REDIS_CACHE_NAMESPACE"]
    mine = {**env, "REDIS_CACHE_URL": fresh_redis_server.url}
    record(mine, "fcache", 3, "compile_rich")
    record(mine, "fcache", 2, "compile_tagged")
    client = fresh_redis_server.client()
    tagged_value = next(k for k in namespace_keys(client, ns) if b"compile_tagged" in k)
    client.set(tagged_value + b":lock", b"token:7", px=60_000)
    client.set("other:key", b"foreign")
    other_ns = namespace_prefix(ns + "-other") + f"{CALLEE}:{{00ff}}"
    client.set(other_ns, b"another namespace")
    before = client.dbsize()

    refused = run_cli("clear", "--yes", env={**mine, "REDIS_CACHE_READ_ONLY": "1"})
    assert refused.returncode == 2
    unconfirmed = run_cli("clear", env=mine)  # stdin is not a terminal
    assert unconfirmed.returncode == 1
    assert "--yes" in unconfirmed.stderr
    glob = run_cli("clear", "--callee", "tests.support.helpers.*", "--yes", env=mine)
    assert glob.stdout.strip() == "deleted 0 keys"
    assert client.dbsize() == before

    one = run_cli("clear", "--callee", "tests.support.helpers.compile_tagged", "--yes", env=mine)
    assert one.returncode == 0, one.stderr
    assert one.stdout.strip() == "deleted 3 keys"  # two values and a lock
    left = namespace_keys(client, ns)
    assert not any(b"compile_tagged" in k for k in left)
    assert sum(CALLEE.encode() in k for k in left) == 3
    assert stats_key(namespace_prefix(ns)).encode() in left

    everything = run_cli("clear", "--yes", env=mine)
    assert everything.returncode == 0
    assert everything.stdout.strip() == f"deleted {len(left)} keys"
    assert namespace_keys(client, ns) == []
    assert client.get("other:key") == b"foreign"
    assert client.get(other_ns) == b"another namespace"
    client.close()


def _run_on_terminal(args: list[str], env: dict[str, str], answer: bytes) -> tuple[int, str]:
    """Run with stdin and stderr on a pseudo-terminal; type ``answer``; return code, output."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "redis_cache", *args], stdin=follower, stderr=follower,
        stdout=subprocess.PIPE, env=env,
    )  # fmt: skip
    os.close(follower)
    os.write(leader, answer)
    out, _ = proc.communicate(timeout=120)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return proc.returncode, out.decode() + b"".join(chunks).decode(errors="replace")


def test_clear_on_a_terminal_wants_the_namespace_name(
    server_env: dict[str, str], redis_server: RedisServer, tmp_path: Path
) -> None:
    ns = server_env["REDIS_CACHE_NAMESPACE"]
    record(server_env, "fcache", 2)
    with redis_server.client() as client:
        count = len(namespace_keys(client, ns))
        code, output = _run_on_terminal(["clear"], server_env, b"not-the-name\n")
        assert code == 1
        assert "type the namespace name to confirm" in output.lower()
        assert len(namespace_keys(client, ns)) == count
        code, output = _run_on_terminal(["dump", str(tmp_path / "d.dump")], server_env, b"")
        assert code == 0 and "\rdumped 2 of 2 (100%) entries" in output  # progress, total
        code, output = _run_on_terminal(["load", str(tmp_path / "d.dump")], server_env, b"")
        assert code == 0 and "\rloaded 2 of 2 (100%) entries" in output, output
        code, output = _run_on_terminal(["stats"], server_env, b"")
        assert code == 0 and "\rcounted 2 entries" in output, output
        code, output = _run_on_terminal(["clear"], server_env, ns.encode() + b"\n")
        assert code == 0, output
        assert f"\rdeleted {count} of {count} (100%) keys" in output, output
        assert f"deleted {count} keys" in output
        assert namespace_keys(client, ns) == []


# --------------------------------------------------------------------------- global options


def test_version_and_the_url_and_namespace_overrides(
    env: dict[str, str], redis_server: RedisServer
) -> None:
    version = run_cli("--version", env=env)
    assert version.returncode == 0
    assert version.stdout.startswith("redis-cache ") and "redis-py" in version.stdout
    record({**env, "REDIS_CACHE_URL": redis_server.url}, "fcache", 2)
    # The environment points at a dead server and another namespace; the options win.
    dead = {**env, "REDIS_CACHE_URL": f"redis://127.0.0.1:{free_port()}/0",
            "REDIS_CACHE_NAMESPACE": "not-this-one"}  # fmt: skip
    assert run_cli("stats", env=dead).returncode == 1
    done = run_cli("--url", redis_server.url, "--namespace", env["REDIS_CACHE_NAMESPACE"],
                   "stats", "--json", env=dead)  # fmt: skip
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["namespace"] == env["REDIS_CACHE_NAMESPACE"] and stats["entries"] == 2
    bad = run_cli("--namespace", "../up", "stats", env=dead)
    assert bad.returncode == 2 and "REDIS_CACHE_NAMESPACE" in bad.stderr


def test_every_configuration_error_exits_2(env: dict[str, str], tmp_path: Path) -> None:
    password = "hunter2-do-not-print"
    url = f"redis://:{password}@127.0.0.1:{free_port()}/0?foo=bar"
    dump = str(tmp_path / "x.dump")
    for args in (("stats",), ("dump", dump), ("load", dump), ("clear", "--yes"),
                 ("prune", "--max-bytes", "lots"), ("prune",)):  # fmt: skip
        done = run_cli(*args, env={**env, "REDIS_CACHE_URL": url})
        assert done.returncode == 2, (args, done.stderr)
        assert "Traceback" not in done.stderr and password not in done.stderr
    assert "'foo'" in run_cli("stats", env={**env, "REDIS_CACHE_URL": url}).stderr


# --------------------------------------------------------------------------- dump, load: streams


def test_dump_to_stdout_load_from_stdin_keeps_ttls(
    env: dict[str, str], fresh_redis_server: RedisServer, second_server: RedisServer
) -> None:
    ns = env["REDIS_CACHE_NAMESPACE"]
    source = {**env, "REDIS_CACHE_URL": fresh_redis_server.url, "REDIS_CACHE_TTL": "3600"}
    record(source, "fcache", 3)
    record({**source, "REDIS_CACHE_DETERMINISTIC": "1"}, "dcache", 2)
    target = {**env, "REDIS_CACHE_URL": second_server.url}
    dump = subprocess.run([sys.executable, "-m", "redis_cache", "dump", "-"], env=source,
                          capture_output=True, timeout=120, check=True)  # fmt: skip
    assert dump.stdout.startswith(b"REDIS_CACHE_DUMP")
    assert b"dumped 5 entries to stdout" in dump.stderr
    load = subprocess.run([sys.executable, "-m", "redis_cache", "load", "-"], env=target,
                          input=dump.stdout, capture_output=True, timeout=120,
                          check=True)  # fmt: skip
    assert load.stdout.decode().strip() == "loaded 5, skipped 0 existing, 0 oversize, 0 expired"
    with second_server.client() as client:
        ttls = {k: client.ttl(k) for k in namespace_keys(client, ns)}
    fcache_ttls = [t for k, t in ttls.items() if b":fcache:" in k]
    dcache_ttls = [t for k, t in ttls.items() if b":dcache:" in k]
    assert len(fcache_ttls) == 3 and all(3500 < t <= 3600 for t in fcache_ttls), ttls
    assert dcache_ttls == [-1, -1]  # dcache entries never expire, before or after
    hits = record({**target, "REDIS_CACHE_DIR": str(Path(env["REDIS_CACHE_DIR"]) / "b")},
                  "fcache", 3)  # fmt: skip
    assert hits["stats"]["remote_hits"] == 3 and hits["values"] == expected_values(3)


def test_dump_one_interface(env: dict[str, str], fresh_redis_server: RedisServer,
                            tmp_path: Path) -> None:  # fmt: skip
    source = {**env, "REDIS_CACHE_URL": fresh_redis_server.url}
    record(source, "fcache", 3)
    record({**source, "REDIS_CACHE_DETERMINISTIC": "1"}, "dcache", 2)
    for interface, count in (("dcache", 2), ("fcache", 3)):
        path = tmp_path / f"{interface}.dump"
        done = run_cli("dump", "--interface", interface, str(path), env=source)
        assert done.stdout.strip() == f"dumped {count} entries to {path}"
        assert {r.space for r in dumpfile.read(path)} == {interface}


def test_old_dumps_load_and_expired_entries_are_skipped(
    env: dict[str, str], fresh_redis_server: RedisServer, tmp_path: Path
) -> None:
    target = {**env, "REDIS_CACHE_URL": fresh_redis_server.url}
    blob = b"an envelope; load does not decode"
    # Three-field records: the first dump format (dcache entries, no space, no expiry).
    old = tmp_path / "old.dump"
    packer = msgpack.Packer(use_bin_type=True)
    chunks = [packer.pack([CALLEE, f"{i:064x}", blob]) for i in range(2)]
    crc = 0
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
    old.write_bytes(dumpfile.MAGIC + b"".join(chunks) + packer.pack([None, 2, crc]))
    done = run_cli("load", str(old), env=target)
    assert done.stdout.strip() == "loaded 2, skipped 0 existing, 0 oversize, 0 expired"
    now_ms = int(time.time() * 1000)
    mixed = tmp_path / "mixed.dump"
    dumpfile.write(mixed, [
        dumpfile.DumpRecord(CALLEE, "a" * 64, blob, "fcache", now_ms - 1000),  # expired
        dumpfile.DumpRecord(CALLEE, "b" * 64, blob, "fcache", now_ms + 600_000),
    ])  # fmt: skip
    done = run_cli("load", str(mixed), env=target)
    assert done.stdout.strip() == "loaded 1, skipped 0 existing, 0 oversize, 1 expired"
    with fresh_redis_server.client() as client:
        keys = namespace_keys(client, env["REDIS_CACHE_NAMESPACE"])
        assert len(keys) == 3
        assert sorted(client.ttl(k) for k in keys)[-1] in range(590, 601)
        assert sum(b":dcache:" in k for k in keys) == 2


# --------------------------------------------------------------------------- cluster


def test_stats_dump_load_clear_on_a_cluster(
    env: dict[str, str], redis_cluster: RedisClusterHandle, tmp_path: Path
) -> None:
    n = 12
    ns = env["REDIS_CACHE_NAMESPACE"]
    cluster = {**env, "REDIS_CACHE_URL": redis_cluster.url, "REDIS_CACHE_CLUSTER": "1"}
    record(cluster, "fcache", n)
    holders = 0
    for node in redis_cluster.nodes:
        with node.client() as client:
            holders += bool(namespace_keys(client, ns))
    assert holders >= 2  # the entries are spread: SCAN must visit every primary

    doctor = run_cli("doctor", env=cluster)
    assert doctor.returncode == 0, doctor.stdout
    assert "3 primaries" in doctor.stdout
    stats = json.loads(run_cli("stats", "--json", env=cluster).stdout)
    assert stats["entries"] == n
    assert stats["counters"]["fcache"]["inserts"] >= n
    dump = tmp_path / "cluster.dump"
    assert f"dumped {n} entries" in run_cli("dump", str(dump), env=cluster).stdout
    cleared = run_cli("clear", "--callee", CALLEE, "--yes", env=cluster)
    assert cleared.stdout.strip() == f"deleted {n} keys"
    loaded = run_cli("load", str(dump), env=cluster)
    assert loaded.stdout.strip() == f"loaded {n}, skipped 0 existing, 0 oversize, 0 expired"
    assert run_cli("clear", "--yes", env=cluster).returncode == 0
    assert json.loads(run_cli("stats", "--json", env=cluster).stdout)["entries"] == 0


# --------------------------------------------------------------------------- publisher


def _counters(client: Any, namespace: str) -> dict[str, str]:
    raw = client.hgetall(stats_key(namespace_prefix(namespace)))
    return {k.decode(): v.decode() for k, v in raw.items()}


def kernel(x: int) -> tuple[int, str]:
    return (x, "kernel")


def _child_calls(cache: FastCache) -> None:
    wrapped = cache.record()(kernel)
    for i in range(100, 103):
        wrapped(i)
    cache.close()


def test_publisher_counts_each_process_once_across_fork(
    tmp_path: Path, redis_server: RedisServer, namespace: str
) -> None:
    settings = make_settings(tmp_path, url=redis_server.url, namespace=namespace,
                             stats_interval=3600)  # fmt: skip
    cache = FastCache(settings)
    wrapped = cache.record()(kernel)
    for i in range(4):
        wrapped(i)
    child = multiprocessing.get_context("fork").Process(target=_child_calls, args=(cache,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    wrapped(4)
    cache._stats.lock_wait_seconds += 0.25
    cache.close()
    with redis_server.client() as client:
        counters = _counters(client, namespace)
    assert counters["fcache.misses"] == "8"  # 5 here + 3 in the child, none twice
    assert counters["fcache.inserts"] == "8"
    assert float(counters["fcache.lock_wait_seconds"]) == 0.25


def test_publisher_failures_never_reach_the_caller(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    settings = make_settings(tmp_path, url=url, stats_interval=0.01, connect_timeout=0.05,
                             breaker_cooldown=0.01)  # fmt: skip
    cache = FastCache(settings)
    wrapped = cache.record()(kernel)
    assert [wrapped(i) for i in range(20)] == [(i, "kernel") for i in range(20)]
    cache.close()  # flushes against a dead server: logged at DEBUG, never raised


def test_publisher_is_not_created_read_only_or_with_interval_zero(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    for overrides in ({"read_only": True}, {"stats_interval": 0.0}):
        cache = FastCache(make_settings(tmp_path, url=redis_server.url, **overrides))
        assert cache._runtime().publisher is None
        cache.close()
    cache = FastCache(make_settings(tmp_path, url=redis_server.url))
    assert cache._runtime().publisher is not None
    cache.close()


def test_key_names_parse_entries_only() -> None:
    # The stats hash and doctor probes live inside the namespace prefix (so clear and ACL
    # patterns cover them) but never parse as entries; foreign suffixes do not either.
    prefix = namespace_prefix("ns")
    assert stats_key(prefix).startswith(prefix)
    assert parse_key(prefix, stats_key(prefix)) is None
    assert parse_key(prefix, prefix + "!doctor:acl-1") is None
    assert parse_key(prefix, prefix + "dcache:m.f:{ab}") == KeyName("dcache", "m.f", "ab")
    assert parse_key(prefix, prefix + "fcache:m.f:{ab}:lock") == KeyName(
        "fcache", "m.f", "ab", "lock"
    )
    assert parse_key(prefix, prefix + "dcache:m.f:{ab}:other") is None
    assert parse_key(prefix, prefix + "m.f:{ab}") is None  # no space: not ours
    assert parse_key(prefix, prefix + "xcache:m.f:{ab}") is None
    assert parse_key(prefix, "other:key") is None
    assert glob_escape("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"
