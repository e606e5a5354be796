"""Settings from ``REDIS_CACHE_*`` environment variables: the only reader of the environment.

Import of the package never reads more than ``REDIS_CACHE_DETERMINISTIC`` (to pick
``icache``); everything else is parsed on first use so that a worker with a bad
setting still imports, and the first call names the variable, the bad value and
what is accepted.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import threading
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import exceptions
from .envvars import deterministic_at_import
from .target import Target, parse_target, redact_url

__all__ = [
    "DEFAULTS",
    "RANGES",
    "Compression",
    "Determinism",
    "Settings",
    "Strict",
    "Target",
    "current",
    "deterministic_at_import",
    "load",
    "redact_url",
    "reset",
]

Determinism = Literal["local", "global"]
Strict = Literal["off", "cached", "prepopulated"]
Compression = Literal["auto", "zlib", "zstd", "off"]  # the codec takes this type too

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

# Every variable with its default as written in docs/configuration.md; a test keeps both in
# step. The dataclass below takes its field defaults from here, parsed like the environment.
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

_DAY = 86_400
_GIB = 1 << 30


@dataclass(frozen=True)
class Range:
    """The finite values a numeric variable accepts.

    Every number has both bounds: ``inf``, ``nan`` and ``1e300`` would otherwise pass and
    fail far from here (``OverflowError`` in a socket call, a server refusing ``PX``),
    and a negative timeout must not quietly mean "use the default".
    """

    kind: type[int] | type[float]
    low: float
    high: float
    unit: str

    @property
    def bounds(self) -> tuple[str, str]:
        """Both bounds as written in messages and docs (``0.1``, ``86400``, no exponent)."""
        return _plain(self.low), _plain(self.high)

    @property
    def accepted(self) -> str:
        kind = "an integer" if self.kind is int else "a number"
        low, high = self.bounds
        return f"{kind} of {self.unit} from {low} to {high}"

    def parse(self, text: str) -> int | float | None:
        """The value, or ``None`` if ``text`` is not one inside the range."""
        try:
            value = self.kind(text)
        except (ValueError, OverflowError):
            return None
        return value if self.low <= value <= self.high else None  # nan fails both tests


def _plain(number: float) -> str:
    return str(int(number)) if number == int(number) else f"{number:g}"


RANGES: dict[str, Range] = {
    "REDIS_CACHE_LOCK_TIMEOUT": Range(float, 0, _DAY, "seconds"),
    "REDIS_CACHE_LOCK_LEASE": Range(float, 0.1, _DAY, "seconds"),
    "REDIS_CACHE_TTL": Range(int, 0, 10 * 365 * _DAY, "seconds"),
    # Redis itself stores no string over 512 MiB.
    "REDIS_CACHE_MAX_VALUE_BYTES": Range(int, 1, 512 * 1024 * 1024, "bytes"),
    "REDIS_CACHE_CONNECT_TIMEOUT": Range(float, 0.01, 300, "seconds"),
    "REDIS_CACHE_SOCKET_TIMEOUT": Range(float, 0.01, 300, "seconds"),
    "REDIS_CACHE_RETRY_DEADLINE": Range(float, 0, 3600, "seconds"),
    "REDIS_CACHE_BREAKER_COOLDOWN": Range(float, 0, 3600, "seconds"),
    "REDIS_CACHE_BREAKER_MAX_COOLDOWN": Range(float, 0, _DAY, "seconds"),
    "REDIS_CACHE_MIN_REPLICAS": Range(int, 0, 100, "replicas"),
    "REDIS_CACHE_STATS_INTERVAL": Range(float, 0, _DAY, "seconds"),
    "REDIS_CACHE_MEMO_MAX_BYTES": Range(int, 0, 1024 * _GIB, "bytes"),
    "REDIS_CACHE_DISK_MAX_BYTES": Range(int, 0, 1024 * 1024 * _GIB, "bytes"),
}


def _default(name: str) -> Any:
    """The field default of ``name``: its ``DEFAULTS`` text, parsed as the environment is."""
    text = DEFAULTS[name]
    if name in RANGES:
        return RANGES[name].parse(text)
    if text in ("0", "1"):  # the numbers are all in RANGES: this is a flag
        return text == "1"
    return text or None


def _default_dir() -> Path:
    """The per-user cache directory of the platform (XDG on Linux, ~/Library/Caches on
    macOS, %LOCALAPPDATA% on Windows)."""
    import platformdirs  # noqa: PLC0415 - only when REDIS_CACHE_DIR is unset

    return Path(platformdirs.user_cache_dir("redis_cache", appauthor=False))


@dataclass(frozen=True)
class Settings:
    """Validated settings; build with :func:`load` (or directly in tests)."""

    enabled: bool = _default("REDIS_CACHE_ENABLED")
    deterministic: bool = _default("REDIS_CACHE_DETERMINISTIC")
    # Unset in the environment: "global" with a remote layer (see load()), else this.
    determinism: Determinism = "local"
    strict: Strict = _default("REDIS_CACHE_STRICT")  # noqa: RUF009 - a str
    prepopulate: Path | None = None
    dump_at_exit: Path | None = None
    url: str | None = field(default=None, repr=False)
    namespace: str = _default("REDIS_CACHE_NAMESPACE")
    dir: Path = field(default_factory=_default_dir)
    lock_timeout: float = _default("REDIS_CACHE_LOCK_TIMEOUT")
    lock_lease: float = _default("REDIS_CACHE_LOCK_LEASE")
    cluster: bool = _default("REDIS_CACHE_CLUSTER")
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str = _default("REDIS_CACHE_SENTINEL_MASTER")
    ttl: int = _default("REDIS_CACHE_TTL")
    read_only: bool = _default("REDIS_CACHE_READ_ONLY")
    secret: bytes | None = field(default=None, repr=False)
    max_value_bytes: int = _default("REDIS_CACHE_MAX_VALUE_BYTES")
    connect_timeout: float = _default("REDIS_CACHE_CONNECT_TIMEOUT")
    socket_timeout: float = _default("REDIS_CACHE_SOCKET_TIMEOUT")
    retry_deadline: float = _default("REDIS_CACHE_RETRY_DEADLINE")
    breaker_cooldown: float = _default("REDIS_CACHE_BREAKER_COOLDOWN")
    breaker_max_cooldown: float = _default("REDIS_CACHE_BREAKER_MAX_COOLDOWN")
    min_replicas: int = _default("REDIS_CACHE_MIN_REPLICAS")
    compression: Compression = _default("REDIS_CACHE_COMPRESSION")  # noqa: RUF009 - a str
    single_flight: bool = _default("REDIS_CACHE_SINGLE_FLIGHT")
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    stats_interval: float = _default("REDIS_CACHE_STATS_INTERVAL")
    memo_max_bytes: int = _default("REDIS_CACHE_MEMO_MAX_BYTES")
    disk_max_bytes: int = _default("REDIS_CACHE_DISK_MAX_BYTES")  # 0: unbounded
    torch: bool = _default("REDIS_CACHE_TORCH")
    # A bad deterministic-only variable must not break fcache: dcache raises it on first use.
    deterministic_problem: exceptions.CacheError | None = field(default=None, compare=False)

    @property
    def server_name(self) -> str:
        """Where the remote layer points, safe to log: never user, password or query."""
        if self.sentinels:
            nodes = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel[{nodes}]/{self.sentinel_master}"
        return redact_url(self.url) if self.url else "(no remote layer)"

    @functools.cached_property
    def target(self) -> Target | None:
        """The remote layer's address, parsed once; ``None`` without one.

        Raises :class:`InvalidSettingError` naming ``REDIS_CACHE_URL`` (never quoting
        its credentials) when it cannot be used. :func:`load` asks for it, so settings
        from the environment fail on first use rather than on first connect.
        """
        return parse_target(self)

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

    def number(self, name: str) -> Any:
        value = self.raw(name)
        number = RANGES[name].parse(value)
        if number is None:
            raise self.fail(name, value, RANGES[name].accepted)
        return number

    def path(self, name: str) -> Path | None:
        value = self.raw(name)
        return Path(value).expanduser() if value else None

    def optional(self, name: str) -> str | None:
        return self.raw(name) or None


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
    r = _Reader(os.environ if env is None else env)
    url = r.optional("REDIS_CACHE_URL")
    sentinels = _parse_sentinels(r)
    modes, problem = _deterministic_modes(r, has_remote=url is not None or bool(sentinels))
    secret = r.optional("REDIS_CACHE_SECRET")
    if secret is not None and len(secret) < 16:
        raise r.fail("REDIS_CACHE_SECRET", "", "at least 16 characters")
    settings = Settings(
        **modes,
        **_numbers(r),
        enabled=r.flag("REDIS_CACHE_ENABLED"),
        prepopulate=r.path("REDIS_CACHE_PREPOPULATE"),
        dump_at_exit=r.path("REDIS_CACHE_DUMP"),
        url=url,
        namespace=_namespace(r),
        dir=r.path("REDIS_CACHE_DIR") or _default_dir(),
        cluster=r.flag("REDIS_CACHE_CLUSTER"),
        sentinels=sentinels,
        sentinel_master=r.raw("REDIS_CACHE_SENTINEL_MASTER") or "mymaster",
        read_only=r.flag("REDIS_CACHE_READ_ONLY"),
        secret=secret.encode() if secret else None,
        compression=r.choice("REDIS_CACHE_COMPRESSION", typing.get_args(Compression)),  # type: ignore[arg-type]
        single_flight=r.flag("REDIS_CACHE_SINGLE_FLIGHT"),
        tls_ca_file=r.optional("REDIS_CACHE_TLS_CA_FILE"),
        tls_cert_file=r.optional("REDIS_CACHE_TLS_CERT_FILE"),
        tls_key_file=r.optional("REDIS_CACHE_TLS_KEY_FILE"),
        torch=r.flag("REDIS_CACHE_TORCH"),
        deterministic_problem=problem,
    )
    if problem is None:
        try:
            _check_deterministic_combinations(settings)
        except exceptions.InvalidSettingError as exc:
            settings = dataclasses.replace(settings, deterministic_problem=exc)
    settings.target  # noqa: B018 - parsed now: a bad URL is a settings error on first use
    return settings


def _deterministic_modes(
    r: _Reader, *, has_remote: bool
) -> tuple[dict[str, Any], exceptions.CacheError | None]:
    """A bad deterministic-only variable must not break fcache: dcache raises it later."""
    try:
        determinism_raw = r.raw("REDIS_CACHE_DETERMINISM")
        modes: dict[str, Any] = {
            "deterministic": r.flag("REDIS_CACHE_DETERMINISTIC"),
            "determinism": (
                r.choice("REDIS_CACHE_DETERMINISM", ("local", "global"))
                if determinism_raw
                else ("global" if has_remote else "local")
            ),
            "strict": r.choice("REDIS_CACHE_STRICT", ("off", "cached", "prepopulated")),
        }
    except exceptions.InvalidSettingError as exc:
        return {"deterministic": False, "determinism": "local", "strict": "off"}, exc
    return modes, None


def _namespace(r: _Reader) -> str:
    namespace = r.raw("REDIS_CACHE_NAMESPACE")
    # The namespace is also a directory name under REDIS_CACHE_DIR: "." or ".." would
    # share or escape it.
    if not _NAMESPACE_RE.match(namespace) or not namespace.strip("."):
        raise r.fail(
            "REDIS_CACHE_NAMESPACE",
            namespace,
            "1-64 characters of A-Z a-z 0-9 _ . -, not only dots",
        )
    return namespace


def _numbers(r: _Reader) -> dict[str, Any]:
    """Every numeric setting, each within its range (``RANGES``)."""
    return {name.removeprefix("REDIS_CACHE_").lower(): r.number(name) for name in RANGES}


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
