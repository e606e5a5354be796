"""Where the remote layer is: ``REDIS_CACHE_URL`` (with ``SENTINELS``/``CLUSTER``), parsed once.

Connection building and ``doctor`` read a :class:`Target` instead of taking the URL
apart again. Messages name parts and parameters, never values, and credentials
never show in ``repr``: a malformed URL may hold a password fragment anywhere.
"""

from __future__ import annotations

import functools
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from . import exceptions

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["Target", "Topology", "parse_target", "redact_url"]

Topology = Literal["standalone", "unix", "sentinel", "cluster"]


@dataclass(frozen=True)
class Target:
    """Where the remote layer is: ``REDIS_CACHE_URL`` (with ``SENTINELS``/``CLUSTER``) parsed once.

    Connection building and ``doctor`` read this instead of taking the URL apart again.
    Credentials never show in ``repr``.
    """

    topology: Topology
    tls: bool = False
    host: str | None = None  # a seed node for a cluster; None for unix and sentinel
    port: int = 6379
    path: str | None = None  # unix socket
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = "mymaster"  # the master name sentinels watch
    check_hostname: bool = True  # TLS: the certificate must name the host

    @property
    def scheme(self) -> str:
        return "unix" if self.path is not None else ("rediss" if self.tls else "redis")


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


_QUERY_ALLOWED = frozenset({"db", "username", "password"})
_QUERY_ALLOWED_TLS = _QUERY_ALLOWED | {"ssl_check_hostname"}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")
_DB_PATH = re.compile(r"^/?(\d+)?/?$")
_BOOLEANS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
_TLS_FILES = ("REDIS_CACHE_TLS_CA_FILE", "REDIS_CACHE_TLS_CERT_FILE", "REDIS_CACHE_TLS_KEY_FILE")


def parse_target(s: Settings) -> Target | None:
    """The :class:`Target` of ``s``; raises :class:`InvalidSettingError` for what cannot work."""
    if s.cluster and s.sentinels:
        raise exceptions.InvalidSettingError(
            "REDIS_CACHE_CLUSTER", "1", "0 when REDIS_CACHE_SENTINELS is set (pick one topology)"
        )
    if s.cluster and not s.url:
        raise exceptions.InvalidSettingError(
            "REDIS_CACHE_CLUSTER", "1", "0 unless REDIS_CACHE_URL names a cluster seed node"
        )
    if not s.url and not s.sentinels:
        return None
    scheme, parts, common = _parse_url(s.url) if s.url else ("redis", None, {})
    given = [name for name, value in zip(_TLS_FILES, _tls_files(s), strict=True) if value]
    if given and scheme != "rediss":
        raise exceptions.InvalidSettingError(
            given[0], "<set>", "unset, unless REDIS_CACHE_URL is a rediss:// URL (TLS)"
        )
    if s.sentinels:
        if scheme == "unix":
            raise exceptions.InvalidSettingError(
                "REDIS_CACHE_SENTINELS", "<set>", "unset with a unix:// REDIS_CACHE_URL"
            )
        return Target("sentinel", sentinels=s.sentinels, service=s.sentinel_master, **common)
    if parts is None or s.url is None:  # unreachable: without sentinels there is a URL
        return None
    bad = functools.partial(exceptions.InvalidSettingError, "REDIS_CACHE_URL", redact_url(s.url))
    if scheme == "unix":
        if s.cluster:
            raise bad("a redis:// or rediss:// seed node for a cluster, not unix://")
        if not parts.path:
            raise bad("unix:///path/of/the.sock (the socket path is missing)")
        return Target("unix", path=urllib.parse.unquote(parts.path), **common)
    if not parts.hostname:
        raise bad("a URL naming a host (only with REDIS_CACHE_SENTINELS may it omit one)")
    if s.cluster and common["db"]:
        raise bad("database 0 for a cluster, which has no other")
    topology: Topology = "cluster" if s.cluster else "standalone"
    host = urllib.parse.unquote(parts.hostname)
    return Target(topology, host=host, port=parts.port or 6379, **common)


def _parse_url(url: str) -> tuple[str, urllib.parse.SplitResult, dict[str, Any]]:
    """Scheme, parts, and the Target fields every topology takes from the URL.

    Messages name parts and parameters, never values: a malformed URL may hold a
    password fragment wherever urllib thinks the port or the query is. Errors are
    raised outside ``except`` blocks so that no exception quoting the URL is chained.
    """
    bad = functools.partial(exceptions.InvalidSettingError, "REDIS_CACHE_URL", redact_url(url))
    parts: urllib.parse.SplitResult | None
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        parts = None
    if parts is None:
        raise bad("a URL with a valid host and port (it has an invalid host or port)")
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise bad("redis://, rediss:// or unix:// URLs")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    allowed = _QUERY_ALLOWED_TLS if scheme == "rediss" else _QUERY_ALLOWED
    for name in query:
        if name not in allowed:
            shown = repr(name) if _IDENTIFIER.match(name) else "a query parameter"
            raise bad(f"query parameters {', '.join(sorted(allowed))} (it has {shown})")
    db = query["db"][-1] if "db" in query else ""
    if scheme != "unix":
        match = _DB_PATH.match(parts.path)
        if match is None:
            raise bad("an empty path or a database number (the path is neither)")
        db = db or (match.group(1) or "")
    if db and not db.isdigit():
        raise bad("a database number (Invalid value for 'db')")
    check_hostname = _BOOLEANS.get(query.get("ssl_check_hostname", ["1"])[-1].lower())
    if check_hostname is None:
        raise bad("ssl_check_hostname of true/false/yes/no/1/0 (Invalid value for it)")
    username = query["username"][-1] if "username" in query else parts.username
    password = query["password"][-1] if "password" in query else parts.password
    return (
        scheme,
        parts,
        {
            "tls": scheme == "rediss",
            "db": int(db or 0),
            "username": urllib.parse.unquote(username) if username else None,
            "password": urllib.parse.unquote(password) if password else None,
            "check_hostname": check_hostname,
        },
    )


def _tls_files(s: Settings) -> tuple[str | None, str | None, str | None]:
    return (s.tls_ca_file, s.tls_cert_file, s.tls_key_file)
