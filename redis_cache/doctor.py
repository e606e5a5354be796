"""``redis-cache doctor``: is this machine's configuration fit for workers?

Loads settings exactly as a worker does, then checks, one verdict each, what the
layers rely on: credentials that are not placeholders, a signing secret, a
writable disk directory, a reachable primary that never evicts deterministic
entries (and, for global determinism, persists them), rights on the namespace's
keys and scripts, leases that expire, and a value size limit the server accepts.
What the server offers is read once (:mod:`redis_cache.fitness`), as ``dcache``
reads it. Server messages are shown with the error class and the redacted server
name; known secrets are scrubbed from every line anyway, since a server's reply is
text we do not control.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import ssl
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import redis.exceptions

from . import config, exceptions, fitness
from .config import Settings
from .fitness import ServerReport
from .layers.redis import RedisLayer

Status = Literal["ok", "FAIL", "warn", "skip"]

LEASE_PROBE_MS = 2000
PROBE_TTL_MS = 10_000  # a probe key left behind (no DEL right) expires by itself
PROBE_SCRIPT = "return redis.call('GET', KEYS[1])"
_VERIFY_FAILED = re.compile(r"CERTIFICATE_VERIFY_FAILED\]\s*(?:certificate verify failed:)?([^(]*)")
_REMOTE_CHECKS = ("role", "eviction", "persistence", "replicas", "acl", "lease", "max-value")
_SERVER_CHECKS = ("role", "eviction", "persistence", "replicas", "max-value")
# Parts of a password or secret that mark a value nobody replaced (compared lowercased,
# without - _ . and spaces): the shipped deploy files use CHANGE-ME-..., docs use example.
PLACEHOLDERS = (
    "changeme",
    "replaceme",
    "placeholder",
    "password",
    "example",
    "yoursecret",
    "secrethere",
    "xxxxxx",
)


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


@dataclass
class Report:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.status != "FAIL" for c in self.checks)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}

    def render(self) -> str:
        lines = [f"{c.status:<5} {c.name:<12} {c.detail}" for c in self.checks]
        failed = sum(c.status == "FAIL" for c in self.checks)
        warned = sum(c.status == "warn" for c in self.checks)
        verdict = f"{failed} FAIL" if failed else "ok"
        lines.append(f"doctor: {verdict}, {warned} warn, {len(self.checks)} checked")
        return "\n".join(lines)


def run() -> Report:
    """Every check, in order; never raises for a sick server or bad settings."""
    try:
        settings = config.load()
    except exceptions.InvalidSettingError as exc:
        return Report([Check("settings", "FAIL", str(exc))])
    checks = [
        check_settings(settings),
        check_credentials(settings),
        check_secret(settings),
        check_disk(settings.dir),
    ]
    if not settings.has_remote:
        checks.append(Check("remote", "skip", "REDIS_CACHE_URL is not set: memo + disk only"))
    else:
        checks.append(Check("remote", "ok", f"{settings.server_name} ({_topology(settings)})"))
        checks.extend(remote_checks(settings))
    hidden = hidden_strings(settings)
    return Report([Check(c.name, c.status, scrub(c.detail, hidden)) for c in checks])


# --------------------------------------------------------------------------- local


def check_settings(settings: Settings) -> Check:
    mode = "dcache" if settings.deterministic else "fcache"
    summary = f"namespace {settings.namespace!r}, icache = {mode}"
    if settings.deterministic:
        summary += f", {settings.determinism} determinism, strict {settings.strict}"
    problem = settings.deterministic_problem
    if problem is None:
        return Check("settings", "ok", f"valid: {summary}")
    # A bad deterministic variable breaks dcache only; fatal if workers run dcache.
    status: Status = "FAIL" if config.deterministic_at_import() else "warn"
    return Check("settings", status, f"dcache will refuse to start: {problem}")


def check_credentials(settings: Settings) -> Check:
    """FAIL on a password or secret that was never replaced (``CHANGE-ME-…``, ``example``)."""
    target = settings.target
    named = {
        "the password in REDIS_CACHE_URL": target.password if target else None,
        "REDIS_CACHE_SECRET": settings.secret.decode(errors="replace") if settings.secret else None,
    }
    placeholders = [name for name, value in named.items() if value and is_placeholder(value)]
    if placeholders:
        detail = f"{' and '.join(placeholders)}: a placeholder nobody replaced; set real ones"
        return Check("credentials", "FAIL", f"{detail} (words checked: docs/security.md)")
    given = [name for name, value in named.items() if value]
    if not given:
        return Check("credentials", "skip", "no password or secret set")
    return Check("credentials", "ok", f"{' and '.join(given)}: no placeholder")


def is_placeholder(value: str) -> bool:
    """Whether ``value`` contains a word of :data:`PLACEHOLDERS`."""
    squashed = re.sub(r"[-_. ]", "", value.lower())
    return any(word in squashed for word in PLACEHOLDERS)


def check_secret(settings: Settings) -> Check:
    """Without a secret, every reader trusts whatever anyone who can write stored."""
    if settings.secret:
        return Check("secret", "ok", "REDIS_CACHE_SECRET set: entries are signed and verified")
    if not settings.has_remote:
        return Check("secret", "skip", "REDIS_CACHE_SECRET not set (no remote layer)")
    return Check("secret", "warn", "REDIS_CACHE_SECRET not set: every worker trusts whatever "
                 "anyone who can write to the namespace stored (see docs/security.md)")  # fmt: skip


def check_disk(directory: Path) -> Check:
    """Create, link and delete a file: exactly what the disk layer does for each entry."""
    token = f".doctor-{os.getpid()}-{secrets.token_hex(4)}"
    tmp, linked = directory / token, directory / f"{token}.link"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(b"redis_cache doctor probe\n")
        os.link(tmp, linked)
    except OSError as exc:
        return Check("disk", "FAIL", f"{directory}: {exc.strerror or exc} (REDIS_CACHE_DIR)")
    finally:
        for path in (linked, tmp):
            with contextlib.suppress(OSError):
                path.unlink()
    return Check("disk", "ok", f"{directory}: create, link and delete work")


def _topology(settings: Settings) -> str:
    return settings.target.topology if settings.target else "none"


# --------------------------------------------------------------------------- remote


def remote_checks(settings: Settings) -> list[Check]:
    layer = RedisLayer(settings)
    try:
        client, failure = _connect(layer)
        checks = [_reachable(settings, failure), _tls(settings, failure)]
        if client is None:
            checks += [Check(n, "skip", "not checked: server unreachable") for n in _REMOTE_CHECKS]
            return checks
        server = _server_checks(layer)
        checks += server[:-1]
        checks += [check_acl(layer, client), check_lease(layer, client), server[-1]]
        return checks
    finally:
        layer.close()


def _connect(layer: RedisLayer) -> tuple[Any, exceptions.RemoteUnavailableError | None]:
    """A client that answered PING, or the error (class and server name in its text)."""
    try:
        client = layer.client()
        with layer.translated("PING"):
            client.ping()
    except exceptions.RemoteUnavailableError as exc:
        return None, exc
    return client, None


def _reachable(settings: Settings, failure: Exception | None) -> Check:
    if failure is None:
        return Check("reachable", "ok", f"PING answered by {settings.server_name}")
    return Check("reachable", "FAIL", str(failure))


def _tls(settings: Settings, failure: Exception | None) -> Check:
    target = settings.target
    if target is None or not target.tls:
        return Check("tls", "skip", f"not in use ({target.scheme if target else 'no'} URL)")
    reason = None if failure is None else _cert_failure(failure)
    if reason is not None:
        return Check("tls", "FAIL", f"server certificate not verified ({reason}); "
                     "REDIS_CACHE_TLS_CA_FILE must name the CA that signed it")  # fmt: skip
    if failure is not None:
        return Check("tls", "skip", "not checked: server unreachable")
    trust = settings.tls_ca_file or "the system trust store"
    mutual = "; client certificate sent" if settings.tls_cert_file else ""
    return Check("tls", "ok", f"in use; server certificate verified against {trust}{mutual}")


def _cert_failure(exc: BaseException) -> str | None:
    """Why the server's certificate failed verification, if that is what ``exc`` is."""
    for link in _chain(exc):
        if isinstance(link, ssl.SSLCertVerificationError):
            return str(link.verify_message or link.reason or link)
        found = _VERIFY_FAILED.search(str(link))  # redis-py keeps only the text
        if found:
            return found.group(1).strip().rstrip(".")
    return None


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _server_checks(layer: RedisLayer) -> list[Check]:
    """Role, eviction, persistence, replicas and max-value from one fitness report."""
    settings = layer.settings
    try:
        report = fitness.inspect(layer)
    except exceptions.RemoteUnavailableError as exc:
        status: Status = "FAIL" if settings.deterministic_global else "warn"
        return [
            Check("role", status, f"{exc} (dcache's consistency check needs INFO)"),
            *(Check(n, "skip", "INFO unavailable") for n in _SERVER_CHECKS[1:]),
        ]
    return [
        check_role(settings, report),
        check_eviction(settings, report),
        check_persistence(settings, report),
        check_replicas(settings, report),
        check_max_value(settings, report),
    ]


def check_role(settings: Settings, report: ServerReport) -> Check:
    if report.primary:
        count = f"{len(report.nodes)} primaries" if len(report.nodes) > 1 else "primary"
        return Check("role", "ok", f"{count} (redis {report.versions})")
    if settings.read_only:
        return Check("role", "warn", f"role {report.roles}: reads only (REDIS_CACHE_READ_ONLY=1)")
    return Check("role", "FAIL", f"role {report.roles}, not a primary: writes will be refused")


def check_eviction(settings: Settings, report: ServerReport) -> Check:
    shown = report.eviction_policies
    if report.eviction_safe:
        return Check("eviction", "ok", f"maxmemory-policy {shown}: entries without TTL are kept")
    detail = f"maxmemory-policy {shown} may evict entries without TTL"
    if settings.deterministic_global:
        return Check("eviction", "FAIL", f"{detail}, breaking global determinism "
                     "(use noeviction or a volatile-* policy)")  # fmt: skip
    return Check("eviction", "warn", f"{detail} (fine for fcache; unsafe for dcache)")


def check_persistence(settings: Settings, report: ServerReport) -> Check:
    """Global determinism needs persistence: a restart that loses entries lets workers
    compute new results for keys whose old results others already used."""
    if any(node.aof for node in report.nodes) and report.persistent:
        return Check("persistence", "ok", "AOF on")
    if report.persistent:
        save = next(node.rdb_save for node in report.nodes if node.rdb_save)
        return Check("persistence", "ok", f"RDB snapshots (save {save!r})")
    if report.persistent is None:
        return Check("persistence", "warn", "AOF off; RDB unknown (CONFIG GET not allowed)")
    detail = "neither AOF nor RDB: a restart loses every entry"
    if settings.deterministic_global:
        return Check("persistence", "FAIL", f"{detail}, and workers then compute new results "
                     "for keys others already used, breaking global determinism "
                     "(appendonly yes, or a save schedule)")  # fmt: skip
    return Check("persistence", "warn", detail)


def check_replicas(settings: Settings, report: ServerReport) -> Check:
    wanted = settings.min_replicas
    detail = f"{report.replicas} connected, REDIS_CACHE_MIN_REPLICAS={wanted}"
    if report.replicas < wanted:
        return Check("replicas", "FAIL", f"{detail}: every write would fail its WAIT")
    return Check("replicas", "ok", detail)


def check_max_value(settings: Settings, report: ServerReport) -> Check:
    server_limit = report.proto_max_bulk_len
    if server_limit is None:
        return Check("max-value", "skip", "proto-max-bulk-len unknown (CONFIG GET not allowed)")
    ours = settings.max_value_bytes
    detail = f"REDIS_CACHE_MAX_VALUE_BYTES={ours}, server proto-max-bulk-len={server_limit}"
    if ours > server_limit:
        return Check("max-value", "FAIL", f"{detail}: larger values would be refused")
    return Check("max-value", "ok", detail)


# --------------------------------------------------------------------------- probes


def _probe_key(layer: RedisLayer, what: str) -> str:
    return f"{layer.prefix}!doctor:{what}-{secrets.token_hex(6)}"


def check_acl(layer: RedisLayer, client: Any) -> Check:
    """Run what workers run on one probe key; name each command the server refuses."""
    key = _probe_key(layer, "acl")
    sha = hashlib.sha1(PROBE_SCRIPT.encode(), usedforsecurity=False).hexdigest()
    steps: list[tuple[str, Callable[[], object]]] = [("GET", lambda: client.get(key))]
    if not layer.settings.read_only:
        steps = [
            ("SET", lambda: client.set(key, b"probe", px=PROBE_TTL_MS)),
            *steps,
            ("EVAL", lambda: client.eval(PROBE_SCRIPT, 1, key)),
            ("EVALSHA", lambda: client.evalsha(sha, 1, key)),
            ("DEL", lambda: client.delete(key)),
        ]
    missing: dict[str, list[str]] = {}  # server message -> commands refused with it
    failed = []
    for command, step in steps:
        try:
            step()
        except redis.exceptions.NoPermissionError as exc:
            missing.setdefault(str(exc), []).append(command)
        except (redis.exceptions.RedisError, OSError) as exc:
            failed.append(f"{command}: {type(exc).__name__}: {exc}")
    if missing:
        refused = "; ".join(f"{', '.join(cs)} ({why})" for why, cs in missing.items())
        return Check("acl", "FAIL", f"missing rights on {layer.prefix}*: {refused}")
    if failed:
        return Check("acl", "FAIL", "; ".join(failed))
    return Check("acl", "ok", f"{', '.join(c for c, _ in steps)} allowed on {layer.prefix}*")


def check_lease(layer: RedisLayer, client: Any) -> Check:
    """A lease must expire: ``SET PX 2000`` then ``PTTL`` in (0, 2000], no clocks compared."""
    if layer.settings.read_only:
        return Check("lease", "skip", "REDIS_CACHE_READ_ONLY=1: workers take no leases")
    key = _probe_key(layer, "lease")
    try:
        with layer.translated("lease probe"):
            client.set(key, b"probe", px=LEASE_PROBE_MS)
            pttl = int(client.pttl(key))
            client.delete(key)
    except exceptions.RemoteUnavailableError as exc:
        return Check("lease", "FAIL", str(exc))
    if 0 < pttl <= LEASE_PROBE_MS:
        return Check("lease", "ok", f"SET PX {LEASE_PROBE_MS} then PTTL {pttl}")
    return Check("lease", "FAIL", f"SET PX {LEASE_PROBE_MS} then PTTL {pttl}: leases would "
                 "never expire or vanish at once")  # fmt: skip


# --------------------------------------------------------------------------- secrets


def hidden_strings(settings: Settings) -> list[str]:
    """Strings that must never be printed: the URL's password and the signing secret."""
    found: list[str] = []
    if settings.url:
        with contextlib.suppress(ValueError):
            parts = urllib.parse.urlsplit(settings.url)
            passwords = urllib.parse.parse_qs(parts.query).get("password", [])
            for password in [parts.password or "", *passwords]:
                found += [password, urllib.parse.unquote(password)]
    if settings.secret:
        found.append(settings.secret.decode(errors="replace"))
    return [s for s in found if len(s) >= 3]


def scrub(text: str, hidden: list[str]) -> str:
    """``text`` with every hidden string replaced: for server replies we do not control."""
    for secret in hidden:
        text = text.replace(secret, "<redacted>")
    return text
