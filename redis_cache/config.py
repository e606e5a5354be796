"""Settings from ``REDIS_CACHE_*`` environment variables: the only reader of the environment.

Import of the package never reads more than ``REDIS_CACHE_DETERMINISTIC`` (to pick
``icache``); everything else is parsed on first use so that a worker with a bad
setting still imports, and the first call names the variable, the bad value and
what is accepted.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from . import exceptions

Determinism = Literal["local", "global"]
Strict = Literal["off", "cached", "prepopulated"]
Compression = Literal["auto", "zlib", "zstd", "off"]

T = TypeVar("T")

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_DETERMINISTIC_VARIABLES = frozenset(
    {
        "REDIS_CACHE_DETERMINISTIC",
        "REDIS_CACHE_DETERMINISM",
        "REDIS_CACHE_STRICT",
        "REDIS_CACHE_PREPOPULATE",
        "REDIS_CACHE_DUMP",
    }
)

# Every variable with its default as written in docs/configuration.md; a test keeps both in step.
DEFAULTS: dict[str, str] = {
    "REDIS_CACHE_ENABLED": "1",
    "REDIS_CACHE_DETERMINISTIC": "0",
    "REDIS_CACHE_DETERMINISM": "",
    "REDIS_CACHE_STRICT": "off",
    "REDIS_CACHE_PREPOPULATE": "",
    "REDIS_CACHE_DUMP": "",
    "REDIS_CACHE_URL": "",
    "REDIS_CACHE_NAMESPACE": "default",
    "REDIS_CACHE_DIR": "",
    "REDIS_CACHE_LOCK_TIMEOUT": "60",
    "REDIS_CACHE_LOCK_LEASE": "30",
    "REDIS_CACHE_CLUSTER": "0",
    "REDIS_CACHE_SENTINELS": "",
    "REDIS_CACHE_SENTINEL_MASTER": "mymaster",
    "REDIS_CACHE_TTL": "0",
    "REDIS_CACHE_READ_ONLY": "0",
    "REDIS_CACHE_SECRET": "",
    "REDIS_CACHE_MAX_VALUE_BYTES": "67108864",
    "REDIS_CACHE_CONNECT_TIMEOUT": "1.0",
    "REDIS_CACHE_SOCKET_TIMEOUT": "5.0",
    "REDIS_CACHE_RETRY_DEADLINE": "30",
    "REDIS_CACHE_BREAKER_COOLDOWN": "1.0",
    "REDIS_CACHE_BREAKER_MAX_COOLDOWN": "30",
    "REDIS_CACHE_MIN_REPLICAS": "0",
    "REDIS_CACHE_COMPRESSION": "auto",
    "REDIS_CACHE_SINGLE_FLIGHT": "0",
    "REDIS_CACHE_TLS_CA_FILE": "",
    "REDIS_CACHE_TLS_CERT_FILE": "",
    "REDIS_CACHE_TLS_KEY_FILE": "",
    "REDIS_CACHE_STATS_INTERVAL": "10",
    "REDIS_CACHE_MEMO_MAX_BYTES": "536870912",
    "REDIS_CACHE_DISK_MAX_BYTES": "0",
    "REDIS_CACHE_TORCH": "0",
}


def _default_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "redis_cache"


@dataclass(frozen=True)
class Settings:
    """Validated settings; build with :func:`load` (or directly in tests)."""

    enabled: bool = True
    deterministic: bool = False
    determinism: Determinism = "local"
    strict: Strict = "off"
    prepopulate: Path | None = None
    dump_at_exit: Path | None = None
    url: str | None = field(default=None, repr=False)
    namespace: str = "default"
    dir: Path = field(default_factory=lambda: _default_dir(os.environ))
    lock_timeout: float = 60.0
    lock_lease: float = 30.0
    cluster: bool = False
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str = "mymaster"
    ttl: int = 0
    read_only: bool = False
    secret: bytes | None = field(default=None, repr=False)
    max_value_bytes: int = 64 * 1024 * 1024
    connect_timeout: float = 1.0
    socket_timeout: float = 5.0
    retry_deadline: float = 30.0
    breaker_cooldown: float = 1.0
    breaker_max_cooldown: float = 30.0
    min_replicas: int = 0
    compression: Compression = "auto"
    single_flight: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    stats_interval: float = 10.0
    memo_max_bytes: int = 512 * 1024 * 1024
    disk_max_bytes: int = 0  # 0: unbounded
    torch: bool = False
    # A bad deterministic-only variable must not break fcache: dcache raises it on first use.
    deterministic_problem: exceptions.CacheError | None = field(default=None, compare=False)

    @property
    def server_name(self) -> str:
        """Where the remote layer points, safe to log: never user, password or query."""
        if self.sentinels:
            nodes = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel[{nodes}]/{self.sentinel_master}"
        return redact_url(self.url) if self.url else "(no remote layer)"

    @property
    def has_remote(self) -> bool:
        return bool(self.url) or bool(self.sentinels)

    @property
    def remote_writable(self) -> bool:
        """A remote layer exists and this process may write to it."""
        return self.has_remote and not self.read_only

    @property
    def global_determinism(self) -> bool:
        """dcache synchronizes through Redis (else through the disk layer)."""
        return self.determinism == "global"

    @property
    def deterministic_global(self) -> bool:
        """Workers run dcache, and it synchronizes through Redis."""
        return self.deterministic and self.global_determinism

    @property
    def is_strict(self) -> bool:
        """A strict mode is on: misses raise and inserts are forbidden."""
        return self.strict != "off"

    @property
    def strict_prepopulated(self) -> bool:
        """Only the pre-populated memo is consulted."""
        return self.strict == "prepopulated"


def redact_url(url: str) -> str:
    """``redis://user:pw@host:6379/0`` → ``redis://host:6379/0``: safe for logs and errors.

    Everything up to the *last* ``@`` is user information, whatever it contains:
    a password with an unescaped ``/``, ``?`` or ``#`` must not leak through a
    URL parser that would end the authority early. Query and fragment go too.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<unparseable url>"
    location = rest.rsplit("@", 1)[-1]
    location = location.split("?", 1)[0].split("#", 1)[0]
    return f"{scheme}://{location}"


class _Reader:
    """Parses one environment mapping, raising errors that name the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def raw(self, name: str) -> str:
        return self.env.get(name, DEFAULTS[name]).strip()

    def fail(self, name: str, value: str, accepted: str) -> exceptions.InvalidSettingError:
        if name in _DETERMINISTIC_VARIABLES:
            return exceptions.InvalidDeterministicSettingError(name, value, accepted)
        if name == "REDIS_CACHE_SECRET":
            value = "<redacted>"
        return exceptions.InvalidSettingError(name, value, accepted)

    def flag(self, name: str) -> bool:
        value = self.raw(name)
        if value not in ("0", "1"):
            raise self.fail(name, value, "0 or 1")
        return value == "1"

    def choice(self, name: str, accepted: tuple[str, ...]) -> str:
        value = self.raw(name).lower()
        if value not in accepted:
            raise self.fail(name, value, ", ".join(accepted))
        return value

    def number(self, name: str, convert: Callable[[str], T], minimum: float) -> T:
        value = self.raw(name)
        try:
            number = convert(value)
        except ValueError:
            number = None
        if number is None or not (float(number) >= minimum):  # type: ignore[arg-type]
            kind = "an integer" if convert is int else "a number"
            raise self.fail(name, value, f"{kind} >= {minimum:g}")
        return number

    def path(self, name: str) -> Path | None:
        value = self.raw(name)
        return Path(value).expanduser() if value else None

    def optional(self, name: str) -> str | None:
        return self.raw(name) or None


def _parse_url(reader: _Reader) -> str | None:
    url = reader.optional("REDIS_CACHE_URL")
    if url is None:
        return None
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("redis", "rediss", "unix"):
        # Never echo the URL: it may carry a password.
        raise exceptions.InvalidSettingError(
            "REDIS_CACHE_URL", redact_url(url), "redis://, rediss:// or unix:// URLs"
        )
    return url


def _parse_sentinels(reader: _Reader) -> tuple[tuple[str, int], ...]:
    value = reader.raw("REDIS_CACHE_SENTINELS")
    if not value:
        return ()
    nodes = []
    for item in value.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise reader.fail("REDIS_CACHE_SENTINELS", value, "host:port,host:port,...")
        nodes.append((host.strip("[]"), int(port)))
    return tuple(nodes)


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate every variable; raise :class:`InvalidSettingError` on the first bad one.

    Deterministic-only problems are kept in ``deterministic_problem`` for ``dcache``.
    """
    env = os.environ if env is None else env
    r = _Reader(env)
    url = _parse_url(r)
    sentinels = _parse_sentinels(r)
    has_remote = url is not None or bool(sentinels)
    problem: exceptions.CacheError | None = None
    try:
        deterministic = r.flag("REDIS_CACHE_DETERMINISTIC")
        determinism_raw = r.raw("REDIS_CACHE_DETERMINISM")
        determinism = (
            r.choice("REDIS_CACHE_DETERMINISM", ("local", "global"))
            if determinism_raw
            else ("global" if has_remote else "local")
        )
        strict = r.choice("REDIS_CACHE_STRICT", ("off", "cached", "prepopulated"))
    except exceptions.InvalidSettingError as exc:
        problem, deterministic, determinism, strict = exc, False, "local", "off"
    namespace = r.raw("REDIS_CACHE_NAMESPACE")
    if not _NAMESPACE_RE.match(namespace):
        raise r.fail("REDIS_CACHE_NAMESPACE", namespace, "1-64 characters of A-Z a-z 0-9 _ . -")
    secret = r.optional("REDIS_CACHE_SECRET")
    if secret is not None and len(secret) < 16:
        raise r.fail("REDIS_CACHE_SECRET", "", "at least 16 characters")
    settings = Settings(
        enabled=r.flag("REDIS_CACHE_ENABLED"),
        deterministic=deterministic,
        determinism=determinism,  # type: ignore[arg-type]
        strict=strict,  # type: ignore[arg-type]
        prepopulate=r.path("REDIS_CACHE_PREPOPULATE"),
        dump_at_exit=r.path("REDIS_CACHE_DUMP"),
        url=url,
        namespace=namespace,
        dir=r.path("REDIS_CACHE_DIR") or _default_dir(env),
        lock_timeout=r.number("REDIS_CACHE_LOCK_TIMEOUT", float, 0),
        lock_lease=r.number("REDIS_CACHE_LOCK_LEASE", float, 0.1),
        cluster=r.flag("REDIS_CACHE_CLUSTER"),
        sentinels=sentinels,
        sentinel_master=r.raw("REDIS_CACHE_SENTINEL_MASTER") or "mymaster",
        ttl=r.number("REDIS_CACHE_TTL", int, 0),
        read_only=r.flag("REDIS_CACHE_READ_ONLY"),
        secret=secret.encode() if secret else None,
        max_value_bytes=r.number("REDIS_CACHE_MAX_VALUE_BYTES", int, 1),
        connect_timeout=r.number("REDIS_CACHE_CONNECT_TIMEOUT", float, 0.01),
        socket_timeout=r.number("REDIS_CACHE_SOCKET_TIMEOUT", float, 0.01),
        retry_deadline=r.number("REDIS_CACHE_RETRY_DEADLINE", float, 0),
        breaker_cooldown=r.number("REDIS_CACHE_BREAKER_COOLDOWN", float, 0),
        breaker_max_cooldown=r.number("REDIS_CACHE_BREAKER_MAX_COOLDOWN", float, 0),
        min_replicas=r.number("REDIS_CACHE_MIN_REPLICAS", int, 0),
        compression=r.choice("REDIS_CACHE_COMPRESSION", ("auto", "zlib", "zstd", "off")),  # type: ignore[arg-type]
        single_flight=r.flag("REDIS_CACHE_SINGLE_FLIGHT"),
        tls_ca_file=r.optional("REDIS_CACHE_TLS_CA_FILE"),
        tls_cert_file=r.optional("REDIS_CACHE_TLS_CERT_FILE"),
        tls_key_file=r.optional("REDIS_CACHE_TLS_KEY_FILE"),
        stats_interval=r.number("REDIS_CACHE_STATS_INTERVAL", float, 0),
        memo_max_bytes=r.number("REDIS_CACHE_MEMO_MAX_BYTES", int, 0),
        disk_max_bytes=r.number("REDIS_CACHE_DISK_MAX_BYTES", int, 0),
        torch=r.flag("REDIS_CACHE_TORCH"),
        deterministic_problem=problem,
    )
    if problem is None:
        try:
            _check_deterministic_combinations(settings)
        except exceptions.InvalidSettingError as exc:
            settings = dataclasses.replace(settings, deterministic_problem=exc)
    _check_combinations(settings)
    return settings


def _check_combinations(s: Settings) -> None:
    if s.url and not s.sentinels and s.url.split("://", 1)[0] in ("redis", "rediss"):
        location = s.url.split("://", 1)[1].rsplit("@", 1)[-1]
        if not location or location.startswith(("/", "?", ":")):
            raise exceptions.InvalidSettingError(
                "REDIS_CACHE_URL",
                redact_url(s.url),
                "a URL naming a host (only with REDIS_CACHE_SENTINELS may it omit one)",
            )
    if s.cluster and s.sentinels:
        raise exceptions.InvalidSettingError(
            "REDIS_CACHE_CLUSTER", "1", "0 when REDIS_CACHE_SENTINELS is set (pick one topology)"
        )
    if s.cluster and not s.url:
        raise exceptions.InvalidSettingError(
            "REDIS_CACHE_CLUSTER", "1", "0 unless REDIS_CACHE_URL names a cluster seed node"
        )


def _check_deterministic_combinations(s: Settings) -> None:
    if s.determinism == "global" and not s.has_remote:
        raise exceptions.InvalidDeterministicSettingError(
            "REDIS_CACHE_DETERMINISM", "global", "local (global needs REDIS_CACHE_URL)"
        )
    if s.deterministic and s.determinism == "global" and s.read_only and s.strict != "cached":
        raise exceptions.InvalidDeterministicSettingError(
            "REDIS_CACHE_READ_ONLY",
            "1",
            "0, or 1 only together with REDIS_CACHE_STRICT=cached under global determinism",
        )


def deterministic_at_import(env: Mapping[str, str] | None = None) -> bool:
    """The one choice made at import (``icache``); a bad value leaves ``icache`` as ``fcache``."""
    env = os.environ if env is None else env
    return env.get("REDIS_CACHE_DETERMINISTIC", "0").strip() == "1"


_current: Settings | None = None
_current_lock = threading.Lock()


def current() -> Settings:
    """The process's settings, parsed once on first use."""
    global _current
    if _current is None:
        with _current_lock:
            if _current is None:
                _current = load()
    return _current


def reset() -> None:
    """Forget the parsed settings (tests, or after changing the environment on purpose)."""
    global _current
    with _current_lock:
        _current = None
