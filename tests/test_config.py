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


# --------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REDIS_CACHE_SOCKET_TIMEOUT", "inf"),
        ("REDIS_CACHE_SOCKET_TIMEOUT", "1e300"),
        ("REDIS_CACHE_LOCK_TIMEOUT", "inf"),
        ("REDIS_CACHE_LOCK_LEASE", "inf"),
        ("REDIS_CACHE_LOCK_LEASE", "1e300"),
        ("REDIS_CACHE_STATS_INTERVAL", "inf"),
        ("REDIS_CACHE_RETRY_DEADLINE", "nan"),
        ("REDIS_CACHE_CONNECT_TIMEOUT", "1e300"),
    ],
)
def test_infinite_and_huge_numbers_are_refused(variable: str, value: str) -> None:
    # Each of these passed validation and failed far away (OverflowError, ValueError,
    # a server's ResponseError, a dead publisher thread).
    with pytest.raises(exceptions.InvalidSettingError) as info:
        config.load({variable: value})
    assert variable in str(info.value) and "accepted" in str(info.value)


FLOATS = sorted(name for name, r in config.RANGES.items() if r.kind is float)


@pytest.mark.parametrize("variable", FLOATS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e300", "-1"])
def test_numbers_outside_their_finite_range_are_refused(variable: str, value: str) -> None:
    with pytest.raises(exceptions.InvalidSettingError) as info:
        config.load({variable: value})
    accepted = config.RANGES[variable]
    assert info.value.variable == variable
    assert "from {} to {}".format(*accepted.bounds) in str(info.value)


@pytest.mark.parametrize("variable", sorted(config.RANGES))
def test_every_range_holds_its_default_and_its_bounds(variable: str) -> None:
    accepted = config.RANGES[variable]
    assert accepted.parse(config.DEFAULTS[variable]) is not None
    for bound in (accepted.low, accepted.high):
        text = str(int(bound)) if accepted.kind is int else repr(bound)
        assert getattr(config.load({variable: text}), FIELDS[variable]) == bound
    for outside in (accepted.low - 1, accepted.high * 2 + 1):
        text = str(int(outside)) if accepted.kind is int else repr(outside)
        with pytest.raises(exceptions.InvalidSettingError):
            config.load({variable: text})


FIELDS = {name: name.removeprefix("REDIS_CACHE_").lower() for name in config.RANGES}


def test_docs_state_every_range() -> None:
    rows = {
        m.group(1): line
        for line in (ROOT / "docs" / "configuration.md").read_text().splitlines()
        if (m := ROW.match(line))
    }
    for name, accepted in config.RANGES.items():
        assert "`{}`\N{EN DASH}`{}`".format(*accepted.bounds) in rows[name], name


def test_settings_defaults_come_from_the_defaults_table() -> None:
    # One place: a Settings() built in code equals the settings of an empty environment.
    assert config.Settings() == config.load({})
    assert config.Settings().max_value_bytes == int(config.DEFAULTS["REDIS_CACHE_MAX_VALUE_BYTES"])


def test_default_directory_is_the_platform_cache_directory() -> None:
    import platformdirs  # noqa: PLC0415

    expected = Path(platformdirs.user_cache_dir("redis_cache", appauthor=False))
    assert config.load({}).dir == expected == config.Settings().dir


@pytest.mark.parametrize("namespace", [".", "..", "..."])
def test_a_namespace_of_dots_is_refused(namespace: str) -> None:
    # The namespace names a directory under REDIS_CACHE_DIR: ".." would escape it.
    with pytest.raises(exceptions.InvalidSettingError) as info:
        config.load({"REDIS_CACHE_NAMESPACE": namespace})
    assert "REDIS_CACHE_NAMESPACE" in str(info.value)
    assert config.load({"REDIS_CACHE_NAMESPACE": "team.a-1"}).namespace == "team.a-1"


# --------------------------------------------------------------------------- target


def test_target_of_each_topology() -> None:
    assert config.load({}).target is None
    plain = config.load({"REDIS_CACHE_URL": "redis://u:p%2Fw@cache.example:6380/2"}).target
    assert plain == config.Target(
        "standalone", host="cache.example", port=6380, db=2, username="u", password="p/w"
    )
    assert "p/w" not in repr(plain)
    tls = config.load({"REDIS_CACHE_URL": "rediss://h?ssl_check_hostname=no&db=3"}).target
    assert tls is not None and tls.tls and tls.scheme == "rediss"
    assert (tls.port, tls.db, tls.check_hostname) == (6379, 3, False)
    unix = config.load({"REDIS_CACHE_URL": "unix:///run/redis.sock?db=1"}).target
    assert unix is not None
    assert (unix.topology, unix.path, unix.db) == ("unix", "/run/redis.sock", 1)
    sentinel = config.load(
        {
            "REDIS_CACHE_URL": "rediss://:pw@/4",
            "REDIS_CACHE_SENTINELS": "a:1,b:2",
            "REDIS_CACHE_SENTINEL_MASTER": "cache",
        }
    ).target
    assert sentinel == config.Target(
        "sentinel", tls=True, db=4, password="pw", sentinels=(("a", 1), ("b", 2)), service="cache"
    )
    cluster = config.load({"REDIS_CACHE_URL": "redis://seed:7000", "REDIS_CACHE_CLUSTER": "1"})
    assert cluster.target == config.Target("cluster", host="seed", port=7000)


@pytest.mark.parametrize(
    ("env", "variable", "expected"),
    [
        ({"REDIS_CACHE_URL": "redis://u:pw-77@h:notaport/0"}, "REDIS_CACHE_URL", "host or port"),
        ({"REDIS_CACHE_URL": "redis://u:pw-77@h/abc"}, "REDIS_CACHE_URL", "database number"),
        ({"REDIS_CACHE_URL": "redis://u:pw-77@h/0?db=x"}, "REDIS_CACHE_URL", "'db'"),
        ({"REDIS_CACHE_URL": "redis://u:pw-77@h/?timeout=1"}, "REDIS_CACHE_URL", "'timeout'"),
        ({"REDIS_CACHE_URL": "unix://u:pw-77@"}, "REDIS_CACHE_URL", "socket path"),
        (
            {"REDIS_CACHE_URL": "unix:///s.sock", "REDIS_CACHE_CLUSTER": "1"},
            "REDIS_CACHE_URL",
            "seed node",
        ),
        (
            {"REDIS_CACHE_URL": "redis://:pw-77@h", "REDIS_CACHE_TLS_CA_FILE": "/ca.pem"},
            "REDIS_CACHE_TLS_CA_FILE",
            "rediss://",
        ),
        (
            {"REDIS_CACHE_URL": "unix:///s.sock", "REDIS_CACHE_SENTINELS": "a:1"},
            "REDIS_CACHE_SENTINELS",
            "unix://",
        ),
        ({"REDIS_CACHE_CLUSTER": "1"}, "REDIS_CACHE_CLUSTER", "seed node"),
        (
            {"REDIS_CACHE_URL": "redis://:pw-77@seed:7000/2", "REDIS_CACHE_CLUSTER": "1"},
            "REDIS_CACHE_URL",
            "database 0",
        ),
    ],
)
def test_unusable_targets_are_settings_errors(
    env: dict[str, str], variable: str, expected: str
) -> None:
    with pytest.raises(exceptions.InvalidSettingError) as info:
        config.load(env)
    assert info.value.variable == variable
    assert expected in str(info.value)
    assert "pw-77" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None
