"""Settings: parsing, validation messages, redaction, and agreement with docs/configuration.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from redis_cache import config, exceptions

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\| `(REDIS_CACHE_[A-Z_]+)` \| ([^|]+) \|")


def documented() -> dict[str, str]:
    rows: dict[str, str] = {}
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        match = ROW.match(line)
        if match:
            default = match.group(2).strip()
            rows[match.group(1)] = "" if default == "(unset)" else default.strip("`")
    return rows


def test_docs_list_every_variable_with_its_default() -> None:
    assert documented() == config.DEFAULTS


def test_code_reads_no_undocumented_variable() -> None:
    used: set[str] = set()
    for path in (ROOT / "redis_cache").rglob("*.py"):
        used |= set(re.findall(r"REDIS_CACHE_[A-Z_]+[A-Z]", path.read_text()))
    assert used - set(documented()) == set()


def test_defaults() -> None:
    s = config.load({})
    assert s.enabled and not s.deterministic and s.determinism == "local"
    assert s.namespace == "default" and s.lock_timeout == 60 and s.lock_lease == 30
    assert s.max_value_bytes == 64 * 1024 * 1024 and s.url is None and s.strict == "off"


def test_global_determinism_is_the_default_with_a_url() -> None:
    assert config.load({"REDIS_CACHE_URL": "redis://h:1/0"}).determinism == "global"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REDIS_CACHE_ENABLED", "yes"),
        ("REDIS_CACHE_LOCK_TIMEOUT", "soon"),
        ("REDIS_CACHE_LOCK_TIMEOUT", "-1"),
        ("REDIS_CACHE_LOCK_LEASE", "0"),
        ("REDIS_CACHE_TTL", "1.5"),
        ("REDIS_CACHE_NAMESPACE", "a b"),
        ("REDIS_CACHE_NAMESPACE", "x{y}"),
        ("REDIS_CACHE_MAX_VALUE_BYTES", "big"),
        ("REDIS_CACHE_COMPRESSION", "lz4"),
        ("REDIS_CACHE_SENTINELS", "host-without-port"),
        ("REDIS_CACHE_CLUSTER", "2"),
        ("REDIS_CACHE_READ_ONLY", "true"),
        ("REDIS_CACHE_MIN_REPLICAS", "-2"),
        ("REDIS_CACHE_SINGLE_FLIGHT", "on"),
    ],
)
def test_bad_values_name_variable_value_and_accepted(variable: str, value: str) -> None:
    with pytest.raises(exceptions.InvalidSettingError) as info:
        config.load({variable: value})
    message = str(info.value)
    assert variable in message
    assert repr(value.lower() if variable == "REDIS_CACHE_COMPRESSION" else value) in message
    assert "accepted" in message
    assert isinstance(info.value, exceptions.UserError)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REDIS_CACHE_DETERMINISTIC", "2"),
        ("REDIS_CACHE_DETERMINISM", "planet"),
        ("REDIS_CACHE_STRICT", "very"),
    ],
)
def test_bad_deterministic_values_are_kept_for_dcache(variable: str, value: str) -> None:
    settings = config.load({variable: value})
    problem = settings.deterministic_problem
    assert isinstance(problem, exceptions.DeterministicCachingInvalidConfigurationError)
    assert variable in str(problem) and repr(value) in str(problem)


def test_global_determinism_without_a_server_is_a_deterministic_problem() -> None:
    settings = config.load({"REDIS_CACHE_DETERMINISM": "global"})
    assert isinstance(
        settings.deterministic_problem, exceptions.DeterministicCachingInvalidConfigurationError
    )


def test_read_only_global_determinism_needs_strict_cached() -> None:
    env = {
        "REDIS_CACHE_URL": "redis://h:1",
        "REDIS_CACHE_DETERMINISTIC": "1",
        "REDIS_CACHE_READ_ONLY": "1",
    }
    assert config.load(env).deterministic_problem is not None
    assert config.load({**env, "REDIS_CACHE_STRICT": "cached"}).deterministic_problem is None


def test_urls_are_never_echoed_with_credentials() -> None:
    with pytest.raises(exceptions.InvalidSettingError) as info:
        config.load({"REDIS_CACHE_URL": "http://user:hunter2@host:1/"})
    assert "hunter2" not in str(info.value)
    s = config.load({"REDIS_CACHE_URL": "rediss://user:hunter2@cache.example:6380/2"})
    assert s.server_name == "rediss://cache.example:6380/2"
    assert "hunter2" not in repr(s)


def test_secret_is_never_echoed() -> None:
    with pytest.raises(exceptions.InvalidSettingError) as info:
        config.load({"REDIS_CACHE_SECRET": "short-pw"})
    assert "short-pw" not in str(info.value)
    s = config.load({"REDIS_CACHE_SECRET": "a-long-enough-secret"})
    assert s.secret == b"a-long-enough-secret"
    assert "a-long-enough-secret" not in repr(s)


def test_sentinels_parse() -> None:
    s = config.load({"REDIS_CACHE_SENTINELS": "a:1, b:2,[::1]:3"})
    assert s.sentinels == (("a", 1), ("b", 2), ("::1", 3))
    assert s.has_remote and s.determinism == "global"


def test_icache_choice_at_import_is_lenient() -> None:
    assert config.deterministic_at_import({"REDIS_CACHE_DETERMINISTIC": "1"}) is True
    assert config.deterministic_at_import({"REDIS_CACHE_DETERMINISTIC": "maybe"}) is False
    assert config.deterministic_at_import({}) is False


def test_a_url_without_a_host_needs_sentinels() -> None:
    with pytest.raises(exceptions.InvalidSettingError) as info:
        config.load({"REDIS_CACHE_URL": "redis://user:pw-123@/0"})
    assert "REDIS_CACHE_SENTINELS" in str(info.value) and "pw-123" not in str(info.value)
    sentinel = config.load(
        {"REDIS_CACHE_URL": "redis://user:pw@/0", "REDIS_CACHE_SENTINELS": "127.0.0.1:26379"}
    )
    assert sentinel.has_remote
