"""Real Redis servers for tests and benchmarks: standalone, TLS, cluster and sentinel.

A plain module (no pytest fixtures) so benchmarks and multiprocess helpers can import
it too; ``require_binary``/``require_tls`` are the only pytest-aware helpers and import
pytest lazily. Every server gets a free port and its own temp dir, and is killed when
its object is collected or the interpreter exits (and, on Linux, when the thread that
started it dies), so a crashed test run leaves no ``redis-server`` behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "RedisClusterHandle",
    "RedisServer",
    "RedisServerError",
    "SentinelHandle",
    "TLSMaterial",
    "free_port",
    "make_tls_material",
    "require_binary",
    "require_module",
    "require_tls",
    "start_cluster",
    "start_sentinel_set",
    "tls_unsupported_reason",
]

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 10.0
CLUSTER_SLOTS = 16384
_CLUSTER_BUS_OFFSET = 10000
_LOG_TAIL_LINES = 40


class RedisServerError(RuntimeError):
    """A test server did not start, stop, or reach the state we waited for."""


# --------------------------------------------------------------------------- skip or fail


def _skip_or_fail(reason: str) -> NoReturn:
    """CI must notice a missing prerequisite (fail); a laptop may just skip."""
    import pytest  # noqa: PLC0415 - lazy: benchmarks import this module without pytest

    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: missing prerequisites fail instead of skipping)")
    pytest.skip(reason)


def require_binary(name: str) -> str:
    """Path of executable ``name``; skips the test (fails it under ``CI=true``) if missing."""
    path = shutil.which(name)
    if path is None:
        _skip_or_fail(f"{name!r} not found on PATH")
    return path


def require_module(name: str) -> None:
    """Skip the test (fail it under ``CI=true``) when module ``name`` is not installed."""
    import importlib.util  # noqa: PLC0415

    if importlib.util.find_spec(name) is None:
        _skip_or_fail(f"{name!r} is not installed (CI installs it with the project's extras)")


def require_tls(material: TLSMaterial, binary: str = "redis-server") -> None:
    """Skip (fail under ``CI=true``) unless ``binary`` can serve TLS with ``material``."""
    reason = tls_unsupported_reason(material, binary)
    if reason is not None:
        _skip_or_fail(reason)


_tls_probe: dict[tuple[str, Path], str | None] = {}


def tls_unsupported_reason(material: TLSMaterial, binary: str = "redis-server") -> str | None:
    """None if ``binary`` serves TLS (probed once by really starting it), else why not.

    Redis built without ``BUILD_TLS`` rejects the ``tls-*`` directives; the only
    trustworthy check is to start a TLS server and PING it.
    """
    key = (binary, material.ca_cert)
    if key not in _tls_probe:
        try:
            RedisServer(binary=binary, tls=material, startup_timeout=5.0).close()
        except RedisServerError as exc:
            _tls_probe[key] = f"{binary} cannot serve TLS (tls-port): {exc}"
        else:
            _tls_probe[key] = None
    return _tls_probe[key]


# --------------------------------------------------------------------------- ports

_ports_lock = threading.Lock()
_ports_handed: set[int] = set()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(*, cluster_bus: bool = False) -> int:
    """A TCP port on 127.0.0.1 that is free now and was not handed out before in this process.

    With ``cluster_bus=True`` the port is picked below the kernel's ephemeral range so that
    ``port + 10000`` (the cluster bus) is a valid port too, and both are checked free.
    """
    with _ports_lock:
        for _ in range(500):
            if cluster_bus:
                port = 12000 + secrets.randbelow(10000)  # not random: forks share its state
                ok = _bindable(port) and _bindable(port + _CLUSTER_BUS_OFFSET)
                taken = {port, port + _CLUSTER_BUS_OFFSET} & _ports_handed
            else:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind((HOST, 0))
                    port = sock.getsockname()[1]
                ok = True
                taken = {port} & _ports_handed
            if ok and not taken:
                _ports_handed.add(port)
                if cluster_bus:
                    _ports_handed.add(port + _CLUSTER_BUS_OFFSET)
                return port
    raise RedisServerError("could not find a free port after 500 attempts")


# --------------------------------------------------------------------------- TLS material


@dataclass(frozen=True)
class TLSMaterial:
    """PEM files of a throwaway CA and of a server and a client certificate it signed."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = redis_cache test
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def make_tls_material(directory: Path, *, days: int = 3650) -> TLSMaterial:
    """Create a CA plus server (SAN IP:127.0.0.1, DNS:localhost) and client certs with openssl.

    P-256 keys keep generation instant; the extensions satisfy strict X.509 checking
    (``VERIFY_X509_STRICT``, the default from Python 3.13 on).
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RedisServerError("openssl not found on PATH")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "openssl.cnf"
    config.write_text(_OPENSSL_CONFIG)

    def run(*args: str | Path) -> None:
        proc = subprocess.run(
            [openssl, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
        )
        if proc.returncode != 0:
            raise RedisServerError(f"openssl {args[0]} failed: {proc.stderr.strip()}")

    def key(name: str) -> Path:
        path = directory / f"{name}.key"
        run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
        path.chmod(0o600)
        return path

    ca_key = key("ca")
    ca_cert = directory / "ca.crt"
    run("req", "-config", config, "-new", "-x509", "-sha256", "-key", ca_key, "-days", str(days),
        "-subj", "/CN=redis_cache test CA", "-extensions", "ca", "-out", ca_cert)  # fmt: skip

    def leaf(name: str, subject: str) -> tuple[Path, Path]:
        leaf_key = key(name)
        csr = directory / f"{name}.csr"
        cert = directory / f"{name}.crt"
        run("req", "-config", config, "-new", "-key", leaf_key, "-subj", subject, "-out", csr)
        run("x509", "-req", "-sha256", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key,
            "-set_serial", f"0x{secrets.token_hex(8)}", "-days", str(days),
            "-extfile", config, "-extensions", name, "-out", cert)  # fmt: skip
        csr.unlink()
        return cert, leaf_key

    server_cert, server_key = leaf("server", "/CN=localhost")
    client_cert, client_key = leaf("client", "/CN=redis_cache-client")
    return TLSMaterial(ca_cert, ca_key, server_cert, server_key, client_cert, client_key)


# --------------------------------------------------------------------------- processes


class _ProcBox:
    """Mutable holder for the live process, shared with the finalizer (not with the server)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None


def _reap(box: _ProcBox, owner_pid: int, directory: str) -> None:
    """Finalizer: SIGKILL the server and drop its dir; a no-op in forked children."""
    if os.getpid() != owner_pid:
        return
    proc = box.proc
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    box.proc = None
    shutil.rmtree(directory, ignore_errors=True)


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """On Linux, have the child get SIGKILL if the starting thread dies (even by SIGKILL).

    Only used from the main thread: the signal fires when the *thread* that forked
    exits, which would kill servers started from short-lived worker threads.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG

    return preexec


def _short_tempdir(prefix: str) -> Path:
    """A fresh dir short enough for a unix socket path (108 bytes on Linux)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if len(str(path)) > 80:
        shutil.rmtree(path, ignore_errors=True)
        path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    return path


def _ping_until_up(
    make_client: Callable[[], redis.Redis],
    proc: subprocess.Popen[bytes],
    deadline: float,
    describe: Callable[[], str],
) -> None:
    client = make_client()
    delay = 0.01
    try:
        while True:
            if proc.poll() is not None:
                raise RedisServerError(f"exited with code {proc.returncode} while starting")
            try:
                client.ping()
                return
            except redis.AuthenticationError:
                return  # it answers; it just wants a password we were not given
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                pass  # not listening yet, or still loading its dataset
            except redis.ResponseError:
                return  # e.g. NOPERM: it answers
            if time.monotonic() > deadline:
                raise RedisServerError(f"did not answer PING in time ({describe()})")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
    finally:
        client.close()


class RedisServer:
    """One ``redis-server`` (or sentinel) process on 127.0.0.1, a free port and a private dir.

    ``config`` takes raw redis.conf lines (``"maxmemory-policy allkeys-lru"``,
    ``"appendonly yes"``); later lines win, so they override the defaults
    ``save ""`` / ``appendonly no``. ``acl`` takes aclfile lines
    (``"user u on >pw ~ns:* +@all"``; the ``user`` prefix is optional); the default user
    stays ``on nopass`` unless a line defines it. ``tls`` switches the listener to
    ``tls-port`` (plain ``port 0``). The server starts in the constructor unless
    ``start=False``.
    """

    def __init__(
        self,
        *,
        config: Iterable[str] = (),
        password: str | None = None,
        acl: Sequence[str] = (),
        tls: TLSMaterial | None = None,
        tls_auth_clients: Literal["no", "optional", "yes"] = "optional",
        unix_socket: bool = False,
        sentinel: bool = False,
        cluster_bus: bool = False,
        port: int | None = None,
        binary: str = "redis-server",
        startup_timeout: float = STARTUP_TIMEOUT,
        start: bool = True,
    ) -> None:
        binary_path = shutil.which(binary)
        if binary_path is None:
            raise RedisServerError(f"{binary!r} not found on PATH")
        self.binary = binary_path
        self.config_lines = list(config)
        self.password = password
        self.acl = [line if line.startswith("user ") else f"user {line}" for line in acl]
        self.tls = tls
        self.tls_auth_clients = tls_auth_clients
        self._unix = unix_socket
        self.sentinel = sentinel
        self.cluster_bus = cluster_bus
        self.startup_timeout = startup_timeout
        self._fixed_port = port is not None
        self._port = port if port is not None else free_port(cluster_bus=cluster_bus)
        self.dir = _short_tempdir("rc-redis-")
        self._box = _ProcBox()
        self._paused = False
        self._config_port: int | None = None
        self._finalizer = weakref.finalize(self, _reap, self._box, os.getpid(), str(self.dir))
        if start:
            self.start()

    # ---- addresses

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        """The port clients use: ``tls-port`` for TLS servers, else ``port``."""
        return self._port

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{HOST}:{self._port}/0"

    @property
    def unix_path(self) -> str | None:
        return str(self.dir / "redis.sock") if self._unix else None

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self._port)

    @property
    def pid(self) -> int | None:
        proc = self._box.proc
        return proc.pid if proc is not None else None

    @property
    def is_running(self) -> bool:
        proc = self._box.proc
        return proc is not None and proc.poll() is None

    @property
    def config_path(self) -> Path:
        return self.dir / ("sentinel.conf" if self.sentinel else "redis.conf")

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    # ---- configuration

    def _write_config(self) -> None:
        lines = [
            f"bind {HOST}",
            f"dir {self.dir}",
            f"logfile {self.log_path}",
            "daemonize no",
            'save ""',
            "appendonly no",
        ]
        if self.tls is not None:
            lines += [
                "port 0",
                f"tls-port {self._port}",
                f"tls-cert-file {self.tls.server_cert}",
                f"tls-key-file {self.tls.server_key}",
                f"tls-ca-cert-file {self.tls.ca_cert}",
                f"tls-auth-clients {self.tls_auth_clients}",
            ]
        else:
            lines.append(f"port {self._port}")
        if self._unix:
            lines += [f"unixsocket {self.dir / 'redis.sock'}", "unixsocketperm 700"]
        if self.password is not None:
            lines.append(f"requirepass {self.password}")
        if self.acl:
            acl_lines = list(self.acl)
            if not any(line.split()[1] == "default" for line in acl_lines):
                acl_lines.insert(0, "user default on nopass ~* &* +@all")
            acl_path = self.dir / "users.acl"
            acl_path.write_text("\n".join(acl_lines) + "\n")
            lines.append(f"aclfile {acl_path}")
        lines += self.config_lines
        self.config_path.write_text("\n".join(lines) + "\n")

    # ---- lifecycle

    def start(self) -> RedisServer:
        """Start (or restart) the process and wait until it answers PING."""
        if self.is_running:
            raise RedisServerError(f"{self.describe()} is already running")
        attempts = 1 if self._fixed_port or self._box.proc is not None else 3
        for attempt in range(attempts):
            try:
                self._spawn_and_wait()
                return self
            except RedisServerError as exc:
                if attempt + 1 < attempts and "Address already in use" in self.log_tail():
                    # Lost a race for the port with another process: pick another one.
                    self._port = free_port(cluster_bus=self.cluster_bus)
                    continue
                raise RedisServerError(f"{self.describe()}: {exc}\n{self.log_tail()}") from None
        raise AssertionError("unreachable")

    def _spawn_and_wait(self) -> None:
        if self._config_port != self._port:
            # Written once per port: a restart keeps whatever the server (or a sentinel,
            # which rewrites its own and the data nodes' config) persisted since.
            self._write_config()
            self._config_port = self._port
        argv = [self.binary, str(self.config_path)]
        if self.sentinel:
            argv.append("--sentinel")
        stdout = open(self.dir / "stdout.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,  # Ctrl-C reaches pytest, which then tears down
                preexec_fn=_pdeathsig_preexec(),
            )
        finally:
            stdout.close()
        self._box.proc = proc
        self._paused = False
        deadline = time.monotonic() + self.startup_timeout
        try:
            _ping_until_up(lambda: self.client(socket_timeout=0.5), proc, deadline, self.describe)
        except RedisServerError:
            self.kill()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM: persistence, if configured, is flushed); keeps the dir."""
        proc = self._box.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        if self._paused:
            self.resume()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL: like a crashed or power-cycled server. Keeps the dir for ``restart``."""
        proc = self._box.proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait(timeout=5)
        self._paused = False

    def restart(self) -> RedisServer:
        """Stop if running, then start on the same port and dir (data survives only if
        persistence is configured and the stop or kill left it on disk)."""
        self.stop()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a hung server)."""
        proc = self._box.proc
        if proc is None or proc.poll() is not None:
            raise RedisServerError(f"{self.describe()} is not running")
        proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        proc = self._box.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
        self._paused = False

    def close(self) -> None:
        """Stop for good: SIGKILL (tests need no graceful flush) and remove the dir."""
        self._finalizer()

    def __enter__(self) -> RedisServer:
        if not self.is_running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- clients and diagnostics

    def client(self, **kwargs: Any) -> redis.Redis:
        """A RESP2, no-retry redis-py client (TLS with the client cert, admin password)."""
        options: dict[str, Any] = {
            "host": HOST,
            "port": self._port,
            "socket_connect_timeout": 2.0,
            "socket_timeout": 5.0,
            "retry": Retry(NoBackoff(), 0),  # redis.Redis() would retry 10 times
            "protocol": 2,  # the reply shapes redis_cache.connection uses (not RESP3)
        }
        if self.password is not None:
            options["password"] = self.password
        if self.tls is not None:
            options.update(
                ssl=True,
                ssl_ca_certs=str(self.tls.ca_cert),
                ssl_certfile=str(self.tls.client_cert),
                ssl_keyfile=str(self.tls.client_key),
            )
        options.update(kwargs)
        return redis.Redis(**options)

    def info(self, section: str) -> dict[str, str]:
        """``INFO section``, values as strings (``master_port`` is ``"6379"``, not 6379)."""
        with self.client() as client:
            parsed = client.info(section)
        return {str(name): str(value) for name, value in parsed.items()}

    def role(self) -> str:
        """``master``, ``slave`` or ``sentinel``."""
        return self.info("replication").get("role", "sentinel" if self.sentinel else "?")

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        chunks = []
        for path in (self.dir / "stdout.log", self.log_path):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                if text:
                    chunks.append(f"--- {path.name} (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(chunks) or "(no log output)"

    def describe(self) -> str:
        kind = "redis-sentinel" if self.sentinel else "redis-server"
        return f"{kind} {HOST}:{self._port} (dir {self.dir})"

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<RedisServer {self.describe()} {state}>"


# --------------------------------------------------------------------------- waiting helpers


def _wait_for(
    what: str, check: Callable[[], bool], timeout: float, detail: Callable[[], str] = str
) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            if check():
                return
            last_error = None
        except (redis.RedisError, OSError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            extra = f"; last error: {last_error!r}" if last_error else ""
            raise RedisServerError(f"timed out after {timeout:g}s waiting for {what}{extra}\n"
                                   f"{detail()}")  # fmt: skip
        time.sleep(0.05)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(raw: Any) -> dict[str, str]:
    """A flat ``[k, v, k, v]`` reply or a map reply (redis-py 8 may hand either) as strings."""
    if isinstance(raw, dict):
        return {_text(k): _text(v) for k, v in raw.items()}
    items = [_text(x) for x in raw]
    return dict(zip(items[0::2], items[1::2], strict=True))


# --------------------------------------------------------------------------- cluster


class RedisClusterHandle:
    """A running cluster of ``redis-server --cluster-enabled yes`` masters (no replicas)."""

    def __init__(self, nodes: list[RedisServer]) -> None:
        self.nodes = nodes

    @property
    def url(self) -> str:
        """Seed node URL (``redis://127.0.0.1:port/0``)."""
        return self.nodes[0].url

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [node.address for node in self.nodes]

    def client(self, **kwargs: Any) -> redis.RedisCluster:
        kwargs.setdefault("protocol", 2)
        return redis.RedisCluster.from_url(self.url, **kwargs)

    def cluster_info(self, node: RedisServer) -> dict[str, str]:
        with node.client() as client:
            raw = client.execute_command("CLUSTER", "INFO")  # no response callback: raw text
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return dict(line.strip().split(":", 1) for line in text.splitlines() if ":" in line)

    def stop(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> RedisClusterHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_cluster(
    masters: int = 3, *, config: Iterable[str] = (), timeout: float = 30.0
) -> RedisClusterHandle:
    """Start ``masters`` nodes, join them with ``redis-cli --cluster create``, wait for ok.

    Ports are chosen so that ``port + 10000`` (the cluster bus) is free as well.
    """
    redis_cli = shutil.which("redis-cli")
    if redis_cli is None:
        raise RedisServerError("redis-cli not found on PATH")
    node_config = [
        "cluster-enabled yes",
        "cluster-config-file nodes.conf",
        "cluster-node-timeout 5000",
        *config,
    ]
    nodes: list[RedisServer] = []
    handle = RedisClusterHandle(nodes)
    try:
        for _ in range(masters):
            nodes.append(RedisServer(config=node_config, cluster_bus=True))
        proc = subprocess.run(
            [redis_cli, "--cluster", "create", *(f"{HOST}:{n.port}" for n in nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RedisServerError(
                f"redis-cli --cluster create failed ({proc.returncode}):\n"
                f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            )

        def all_ok() -> bool:
            for node in nodes:
                info = handle.cluster_info(node)
                if (
                    info.get("cluster_state") != "ok"
                    or info.get("cluster_slots_ok") != str(CLUSTER_SLOTS)
                    or info.get("cluster_known_nodes") != str(masters)
                ):
                    return False
            return True

        _wait_for(
            "cluster_state:ok on every node",
            all_ok,
            timeout,
            lambda: "\n".join(f"{n.port}: {handle.cluster_info(n)}" for n in nodes),
        )
    except BaseException:
        handle.stop()
        raise
    return handle


# --------------------------------------------------------------------------- sentinel


class SentinelHandle:
    """A primary, one replica and three sentinels monitoring them as ``master_name``.

    ``primary``/``replica`` always name the current roles: ``failover()`` swaps them.
    """

    def __init__(
        self,
        primary: RedisServer,
        replica: RedisServer,
        sentinel_servers: list[RedisServer],
        master_name: str,
    ) -> None:
        self.primary = primary
        self.replica = replica
        self.sentinel_servers = sentinel_servers
        self.master_name = master_name

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [s.address for s in self.sentinel_servers]

    @property
    def sentinels_env(self) -> str:
        """The ``REDIS_CACHE_SENTINELS`` value: ``host:port,host:port,host:port``."""
        return ",".join(f"{h}:{p}" for h, p in self.sentinels)

    def master_address(self, sentinel: RedisServer) -> tuple[str, int] | None:
        with sentinel.client() as client:
            raw = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        if not raw:
            return None
        host, port = (_text(x) for x in raw)
        return host, int(port)

    def master_state(self, sentinel: RedisServer) -> dict[str, str]:
        with sentinel.client() as client:
            return _pairs(client.execute_command("SENTINEL", "MASTER", self.master_name))

    def replica_states(self, sentinel: RedisServer) -> list[dict[str, str]]:
        with sentinel.client() as client:
            raw = client.execute_command("SENTINEL", "REPLICAS", self.master_name)
        return [_pairs(item) for item in raw]

    def describe(self) -> str:
        lines = [f"primary {self.primary.port}, replica {self.replica.port}"]
        for s in self.sentinel_servers:
            try:
                state = self.master_state(s)
                lines.append(
                    f"sentinel {s.port}: master {state.get('ip')}:{state.get('port')} "
                    f"flags={state.get('flags')} replicas={state.get('num-slaves')} "
                    f"other-sentinels={state.get('num-other-sentinels')}"
                )
            except (redis.RedisError, OSError) as exc:
                lines.append(f"sentinel {s.port}: {exc!r}")
        return "\n".join(lines)

    def _settled(self, primary: RedisServer, replica: RedisServer) -> bool:
        """Every sentinel agrees on ``primary``, sees ``replica`` healthy and 2 peers."""
        for sentinel in self.sentinel_servers:
            if self.master_address(sentinel) != primary.address:
                return False
            state = self.master_state(sentinel)
            if "s_down" in state.get("flags", "") or int(state.get("num-other-sentinels", 0)) < (
                len(self.sentinel_servers) - 1
            ):
                return False
            replicas = {(r.get("ip"), r.get("port")): r for r in self.replica_states(sentinel)}
            entry = replicas.get((HOST, str(replica.port)))
            if (
                entry is None
                or "disconnected" in entry.get("flags", "")
                or ("s_down" in entry.get("flags", ""))
                or entry.get("master-link-status") != "ok"
            ):
                return False
        return True

    def wait_settled(self, timeout: float = 20.0) -> None:
        """Wait until the replica is in sync and every sentinel knows it and its peers."""
        primary, replica = self.primary, self.replica

        def ready() -> bool:
            return (
                primary.role() == "master"
                and replica.info("replication").get("master_link_status") == "up"
                and self._settled(primary, replica)
            )

        _wait_for("the sentinel set to settle", ready, timeout, self.describe)

    def failover(self, timeout: float = 30.0) -> None:
        """``SENTINEL FAILOVER``, then swap ``primary``/``replica``.

        Returns once every sentinel reports the former replica as master, it reports
        ``role:master`` itself, and the former primary replicates from it (we send that
        REPLICAOF ourselves instead of waiting ~10 s for sentinel to do the same). Raises
        :class:`RedisServerError` with every sentinel's view after ``timeout`` seconds.
        """
        old_primary, new_primary = self.primary, self.replica
        deadline = time.monotonic() + timeout

        def requested() -> bool:
            with self.sentinel_servers[0].client() as client:
                try:
                    client.execute_command("SENTINEL", "FAILOVER", self.master_name)
                except redis.ResponseError as exc:
                    if "NOGOODSLAVE" in str(exc) or "INPROG" in str(exc):
                        return False  # the replica is not yet eligible; ask again
                    raise
            return True

        _wait_for("SENTINEL FAILOVER to be accepted", requested, timeout, self.describe)

        def promoted() -> bool:
            return new_primary.role() == "master" and all(
                self.master_address(s) == new_primary.address for s in self.sentinel_servers
            )

        _wait_for(
            f"{new_primary.port} to be promoted",
            promoted,
            max(0.1, deadline - time.monotonic()),
            self.describe,
        )

        # Sentinel converts the old primary only ~8 s after it reports itself as a master
        # again (a hard-coded grace period); do now what it would do then.
        with old_primary.client() as client:
            client.execute_command("REPLICAOF", HOST, str(new_primary.port))

        def demoted() -> bool:
            info = old_primary.info("replication")
            return info.get("role") == "slave" and info.get("master_port") == str(new_primary.port)

        _wait_for(
            f"{old_primary.port} to become a replica of {new_primary.port}",
            demoted,
            max(0.1, deadline - time.monotonic()),
            self.describe,
        )
        self.primary, self.replica = new_primary, old_primary

    def stop(self) -> None:
        for server in (*self.sentinel_servers, self.replica, self.primary):
            server.close()

    def __enter__(self) -> SentinelHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_sentinel_set(
    master_name: str = "mymaster",
    *,
    sentinels: int = 3,
    quorum: int = 2,
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 5000,
    timeout: float = 30.0,
    password: str | None = None,
    sentinel_password: str | None = None,
) -> SentinelHandle:
    """Primary + replica (``replicaof``) + sentinels, waited on until they all agree.

    ``password`` protects the data nodes (``requirepass``/``masterauth``, and the
    sentinels' ``auth-pass``); ``sentinel_password`` protects the sentinels themselves.
    """
    servers: list[RedisServer] = []
    # Either node may become the primary; without the delay a diskless full sync waits 5 s.
    data_config = ["repl-diskless-sync-delay 0"]
    monitor_auth: list[str] = []
    if password is not None:
        data_config.append(f"masterauth {password}")
        monitor_auth.append(f"sentinel auth-pass {master_name} {password}")
    if sentinel_password is not None:
        monitor_auth.append(f"sentinel sentinel-pass {sentinel_password}")
    try:
        primary = RedisServer(config=data_config, password=password)
        servers.append(primary)
        replica = RedisServer(
            config=[*data_config, f"replicaof {HOST} {primary.port}"], password=password
        )
        servers.append(replica)
        sentinel_servers = []
        for _ in range(sentinels):
            sentinel = RedisServer(
                sentinel=True,
                password=sentinel_password,
                config=[
                    "sentinel resolve-hostnames no",
                    f"sentinel monitor {master_name} {HOST} {primary.port} {quorum}",
                    f"sentinel down-after-milliseconds {master_name} {down_after_ms}",
                    f"sentinel failover-timeout {master_name} {failover_timeout_ms}",
                    f"sentinel parallel-syncs {master_name} 1",
                    *monitor_auth,
                ],
            )
            servers.append(sentinel)
            sentinel_servers.append(sentinel)
        handle = SentinelHandle(primary, replica, sentinel_servers, master_name)
        handle.wait_settled(timeout)
    except BaseException:
        for server in servers:
            server.close()
        raise
    return handle
