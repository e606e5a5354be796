"""deploy/: every config starts a real server, every manifest is consistent.

The server tests run the files as shipped, overriding only what a test must
(port, bind, dir, log and pid file; the ACL file's path), the way compose.yaml and
the StatefulSet add their own command-line arguments: ``include deploy/redis.conf``
followed by the overrides is what ``redis-server deploy/redis.conf --port ...``
does. They also run the library itself as the ACL users of users.acl, and check
that Redis logged no permission denial meanwhile: the users have all they need.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from redis_cache import cli, config
from redis_cache.connection import build_client
from redis_cache.interfaces import CacheInterface, DeterministicCache, FastCache
from tests.support.helpers import make_settings
from tests.support.servers import RedisServer, free_port, require_binary

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
HOST = "127.0.0.1"
NAMESPACE_PREFIX = "redis_cache:v2:default:"
VARIABLE = re.compile(r"\bREDIS_CACHE_[A-Z0-9_]*[A-Z0-9]\b")


# --------------------------------------------------------------------------- helpers


def acl_users() -> dict[str, list[str]]:
    """users.acl as {user: rules}."""
    users = {}
    for line in (DEPLOY / "users.acl").read_text().splitlines():
        if line.strip():
            keyword, name, *rules = line.split()
            assert keyword == "user", line
            users[name] = rules
    return users


def acl_password(user: str) -> str:
    [password] = [rule[1:] for rule in acl_users()[user] if rule.startswith(">")]
    return password


def documented_variables() -> set[str]:
    text = (ROOT / "docs" / "configuration.md").read_text()
    return {m.group(1) for m in re.finditer(r"^\| `(REDIS_CACHE_[A-Z0-9_]+)`", text, re.M)}


def deploy_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file())


def yaml_files() -> list[Path]:
    return [p for p in deploy_files() if p.suffix in (".yaml", ".yml")]


def load_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


_INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
# What an operator's deploy/.env holds: users.acl's passwords and a secret.
ENV_FILE_VARIABLES = {
    "REDIS_HEALTHCHECK_PASSWORD": "healthcheck",
    "REDIS_REPLICATION_PASSWORD": "replication",
    "REDIS_SENTINEL_PASSWORD": "sentinel",
    "REDIS_WORKER_PASSWORD": "worker-default",
}
COMPOSE_SECRET = "compose-test-secret-0123456789"


def dot_env() -> dict[str, str]:
    env = {name: acl_password(user) for name, user in ENV_FILE_VARIABLES.items()}
    return {**env, "REDIS_CACHE_SECRET": COMPOSE_SECRET}


class MissingVariable(Exception):
    """Compose would refuse to start: a required ``${VAR:?message}`` is unset."""


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation: ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``, ``$$``."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, operator, argument = match.groups()
            if env.get(name):
                return env[name]
            if operator and operator.endswith("?"):
                raise MissingVariable(f"{name}: {argument}")
            return argument if operator else ""

        return _INTERPOLATION.sub(replace, value)
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    return value


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """compose.yaml as compose sees it with ``env`` (default: a complete deploy/.env)."""
    [doc] = load_yaml(DEPLOY / "compose.yaml")
    return interpolate(doc, dot_env() if env is None else env)


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_yaml(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{key} defined twice"
            objects[key] = doc
    return objects


def k8s_data(obj: dict[str, Any]) -> dict[str, str]:
    """A ConfigMap's data or a Secret's stringData (plain text here, by design)."""
    return {**obj.get("data", {}), **obj.get("stringData", {})}


def pod_specs(objects: dict[tuple[str, str], dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{kind}/{name}", obj["spec"]["template"])
        for (kind, name), obj in objects.items()
        if kind in ("StatefulSet", "Deployment", "DaemonSet", "Job")
    ]


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last error: {last!r}")


def overrides(server: RedisServer) -> list[str]:
    """What a test must override in a shipped config: where it listens and writes."""
    return [
        f"port {server.port}",
        f"bind {HOST}",
        f"dir {server.dir}",
        f"logfile {server.log_path}",
        f"pidfile {server.dir / 'redis.pid'}",
    ]


def start_data_node(extra: tuple[str, ...] = (), *, acl: bool = True) -> RedisServer:
    """redis-server deploy/redis.conf [--aclfile <copy of users.acl>] [extra] [overrides]."""
    require_binary("redis-server")
    server = RedisServer(port=free_port(), start=False)
    lines = [f"include {DEPLOY / 'redis.conf'}"]
    if acl:
        copy = server.dir / "users.acl"
        shutil.copyfile(DEPLOY / "users.acl", copy)
        lines.append(f"aclfile {copy}")
    server.config_lines = [*lines, *extra, *overrides(server)]
    try:
        return server.start()
    except BaseException:
        server.close()
        raise


def start_sentinel(primary: RedisServer, announce_host: str = HOST) -> RedisServer:
    """deploy/sentinel.conf with its placeholders filled in, as compose.yaml does."""
    require_binary("redis-server")
    text = (DEPLOY / "sentinel.conf").read_text()
    for placeholder, value in {
        "@PRIMARY_HOST@": primary.host,
        "@PRIMARY_PORT@": str(primary.port),
        "@ANNOUNCE_HOST@": announce_host,
        "@SENTINEL_PASSWORD@": acl_password("sentinel"),
    }.items():
        assert placeholder in text
        text = text.replace(placeholder, value)
    assert "@" not in re.sub(r"(?m)^#.*$", "", text), "an unfilled placeholder is left"
    server = RedisServer(sentinel=True, port=free_port(), start=False)
    # The filled-in template is the sentinel's (writable) config file; the overrides
    # follow it, as command-line arguments would.
    server.config_lines = [*text.splitlines(), *overrides(server)]
    try:
        return server.start()
    except BaseException:
        server.close()
        raise


def pairs(raw: Any) -> dict[str, str]:
    """A flat ``[k, v, k, v]`` reply (or a map reply) as strings."""

    def text(x: Any) -> str:
        return x.decode() if isinstance(x, bytes) else str(x)

    if isinstance(raw, dict):
        return {text(k): text(v) for k, v in raw.items()}
    return {text(k): text(v) for k, v in zip(raw[0::2], raw[1::2], strict=True)}


def as_user(server: RedisServer, user: str) -> redis.Redis:
    return server.client(username=user, password=acl_password(user))


def acl_denials(server: RedisServer) -> list[Any]:
    with as_user(server, "admin") as admin:
        return list(admin.acl_log())


def run_probe(command: str, server: RedisServer, env: dict[str, str]) -> int:
    """Run a health-check shell command against ``server`` (redis-cli pointed at it)."""
    cli_path = require_binary("redis-cli")
    probe = command.replace("redis-cli", f"{cli_path} -h {server.host} -p {server.port}", 1)
    proc = subprocess.run(
        ["sh", "-c", probe],
        env={**os.environ, **env},
        capture_output=True,
        timeout=10,
        check=False,
    )
    return proc.returncode


def probe_command(test: Any) -> str:
    """A compose healthcheck ``test`` or a k8s exec probe as one shell command."""
    if isinstance(test, str):
        return test
    if test[0] == "CMD-SHELL":
        return test[1]
    if test[:2] == ["sh", "-c"]:
        return test[2]
    raise AssertionError(f"unexpected probe form: {test}")


def shout(text: str) -> str:
    return text.upper()


# --------------------------------------------------------------------------- static checks


def test_every_yaml_file_parses() -> None:
    files = yaml_files()
    assert {p.name for p in files} >= {
        "compose.yaml",
        "configmap.yaml",
        "secret.yaml",
        "statefulset.yaml",
        "service.yaml",
        "worker-job.yaml",
    }
    for path in files:
        docs = load_yaml(path)
        assert docs, f"{path} is empty"
        assert all(isinstance(doc, dict) for doc in docs), path


def test_every_config_file_has_a_server_test() -> None:
    # Each is started by a real_redis test below; a new one needs a test too.
    started = {"redis.conf", "sentinel.conf", "users.acl"}
    shipped = {p.name for p in deploy_files() if p.suffix in (".conf", ".acl")}
    assert shipped == started


def test_every_redis_cache_variable_in_deploy_is_documented() -> None:
    documented = documented_variables()
    assert len(documented) > 20  # the table was found
    named = {}
    for path in deploy_files():
        for name in VARIABLE.findall(path.read_text()):
            named.setdefault(name, path.relative_to(ROOT))
    assert named, "deploy/ names no REDIS_CACHE_* variable at all?"
    unknown = {name: str(where) for name, where in named.items() if name not in documented}
    assert not unknown, f"not in docs/configuration.md: {unknown}"


def test_acl_file_has_one_user_per_line_and_no_comments() -> None:
    # Redis 7.0 rejects comment lines in an aclfile: explanations live in README.md.
    for line in (DEPLOY / "users.acl").read_text().splitlines():
        assert not line.strip() or line.startswith("user "), line
    users = acl_users()
    assert {"default", "admin", "worker-default", "reader-default"} <= set(users)
    assert "off" in users["default"]
    assert f"~{NAMESPACE_PREFIX}*" in users["worker-default"]
    assert f"%R~{NAMESPACE_PREFIX}*" in users["reader-default"]


def test_compose_references_existing_files_volumes_and_services() -> None:
    doc = compose()
    services = doc["services"]
    assert {"redis-primary", "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"} <= set(
        services
    )
    assert any(name.startswith("worker") for name in services)
    declared_volumes = set(doc.get("volumes") or {})
    used_volumes = set()
    for name, service in services.items():
        assert service.get("image"), f"{name} has no image"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if source.startswith((".", "/")):
                path = (DEPLOY / source).resolve()
                assert path.exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in declared_volumes, f"{name} uses undeclared volume {source}"
                used_volumes.add(source)
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = service["depends_on"][dependency].get("condition")
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
    assert used_volumes == declared_volumes, "declared but unused volumes"
    for name in ("redis-primary", "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"):
        assert "healthcheck" in services[name], name


def test_compose_mounts_every_config_file_where_the_commands_read_it() -> None:
    mounted = set()
    for name, service in compose()["services"].items():
        targets = set()
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                mounted.add(source[2:])
                targets.add(target)
        command = " ".join(service.get("command") or [])
        for path in re.findall(r"/usr/local/etc/redis/[\w.-]+", command):
            assert path in targets, f"{name} reads {path}, which it does not mount"
    assert {"redis.conf", "sentinel.conf", "users.acl"} <= mounted


def test_compose_passwords_match_users_acl() -> None:
    services = compose()["services"]
    for name in ("redis-primary", "redis-replica"):
        env = service_env(services[name])
        assert env["REDISCLI_AUTH"] == acl_password("healthcheck")
        assert env["REPLICATION_PASSWORD"] == acl_password("replication")
        assert "$REPLICATION_PASSWORD" in services[name]["command"][-1]
    for name in ("sentinel-1", "sentinel-2", "sentinel-3"):
        env = service_env(services[name])
        assert env["SENTINEL_PASSWORD"] == acl_password("sentinel")
        assert env["ANNOUNCE_HOST"] == name
        assert "@SENTINEL_PASSWORD@" in services[name]["command"][-1]


def test_compose_worker_settings_are_valid_and_point_at_the_sentinels() -> None:
    services = compose()["services"]
    env = service_env(services["worker"])
    settings = config.load(env)
    assert settings.sentinels, "the worker should find the primary through the sentinels"
    sentinel_port = int(re.search(r"(?m)^port (\d+)$", (DEPLOY / "sentinel.conf").read_text())[1])
    for host, port in settings.sentinels:
        assert host in services, f"REDIS_CACHE_SENTINELS names {host}, not a compose service"
        assert port == sentinel_port
    monitor = re.search(r"(?m)^sentinel monitor (\S+) ", (DEPLOY / "sentinel.conf").read_text())
    assert settings.sentinel_master == monitor[1]
    url = urllib.parse.urlsplit(settings.url or "")
    assert url.hostname is None, "with sentinels the URL carries only credentials"
    assert url.username == f"worker-{settings.namespace}"
    assert url.password == acl_password(url.username)
    assert settings.secret == COMPOSE_SECRET.encode()
    assert settings.ttl > 0, "volatile-lru can only evict fcache entries that have a TTL"
    assert settings.disk_max_bytes > 0, "a long-lived worker's disk layer needs a bound"
    # Building the client validates the URL form without connecting.
    build_client(settings).close()
    build = services["worker"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"


def test_deploy_runs_only_existing_cli_commands(capsys: pytest.CaptureFixture[str]) -> None:
    used = set()
    for path in yaml_files():
        used |= set(re.findall(r"\bredis-cache (\w[\w-]*)", path.read_text()))
    assert "demo" in used
    missing = []
    for command in sorted(used):
        with pytest.raises(SystemExit) as exit_info:
            cli.build_parser().parse_args([command, "--help"])
        if exit_info.value.code != 0:
            missing.append(command)
    capsys.readouterr()
    assert missing == [], f"deploy/ runs redis-cache {', '.join(missing)}, not in the CLI"


def test_compose_requires_every_secret_and_falls_back_to_no_placeholder() -> None:
    [raw] = load_yaml(DEPLOY / "compose.yaml")
    text = yaml.safe_dump(raw)  # values only: comments may explain what to set
    assert "CHANGE-ME" not in text
    used = {m.group(1): m.group(2) for m in _INTERPOLATION.finditer(text) if m.group(1)}
    assert set(used) == {*ENV_FILE_VARIABLES, "REDIS_CACHE_SECRET"}
    assert set(used.values()) == {":?"}, f"fallbacks: {used}"
    compose()  # complete: starts
    for missing in used:
        with pytest.raises(MissingVariable, match=missing):
            compose({k: v for k, v in dot_env().items() if k != missing})


def _restricted_problems(where: str, spec: dict[str, Any]) -> list[str]:
    """What the restricted Pod Security Standard refuses in a pod spec."""
    problems = []
    pod = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"{where}: {field}")
    problems += [f"{where}: hostPath volume {v['name']}" for v in spec.get("volumes", [])
                 if "hostPath" in v]  # fmt: skip
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        own = container.get("securityContext") or {}
        name = f"{where}/{container['name']}"

        def setting(key: str, own: dict[str, Any] = own) -> Any:
            return own.get(key, pod.get(key))

        if setting("runAsNonRoot") is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if setting("runAsUser") == 0:
            problems.append(f"{name}: runs as uid 0")
        if (setting("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: no seccompProfile RuntimeDefault")
        if own.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if own.get("privileged"):
            problems.append(f"{name}: privileged")
        capabilities = own.get("capabilities") or {}
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities not dropped (drop: [ALL])")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {capabilities['add']}")
    return problems


def test_every_pod_meets_the_restricted_pod_security_standard() -> None:
    objects = k8s_objects()
    specs = pod_specs(objects)
    assert {where.split("/")[0] for where, _ in specs} >= {"StatefulSet", "Job"}
    problems = [p for where, t in specs for p in _restricted_problems(where, t["spec"])]
    assert problems == []
    labels = objects[("Namespace", "redis-cache")]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # The check itself catches what it should.
    assert len(_restricted_problems("x", {"containers": [{"name": "c"}]})) == 4


PINNED = re.compile(r"^[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}$")
WORKER_IMAGE = "redis-cache-worker"


def dockerfile() -> list[tuple[str, str]]:
    """deploy/Dockerfile as (instruction, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]  # type: ignore[misc]


def test_every_third_party_image_is_pinned_by_tag_and_digest() -> None:
    version = re.search(r'(?m)^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text())[1]
    images = [(f"compose {n}", s["image"]) for n, s in compose()["services"].items()]
    for where, template in pod_specs(k8s_objects()):
        spec = template["spec"]
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            images.append((f"{where}/{c['name']}", c["image"]))
    images += [("Dockerfile", args) for op, args in dockerfile() if op == "FROM"]
    ours = [(where, image) for where, image in images if image.startswith(WORKER_IMAGE + ":")]
    job = "Job/redis-cache-worker-example/worker"
    assert {where for where, _ in ours} == {"compose worker", job}
    # Built here from deploy/Dockerfile, so it carries the package's version.
    assert {image for _, image in ours} == {f"{WORKER_IMAGE}:{version}"}
    unpinned = [(w, i) for w, i in images if (w, i) not in ours and not PINNED.match(i)]
    assert unpinned == []
    assert any(i.startswith("redis:7.") for _, i in images)


def test_the_worker_dockerfile_builds_from_what_the_repository_has() -> None:
    steps = dockerfile()
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore, "the build context should send only what the image needs"
    copies = [args.split() for op, args in steps if op == "COPY"]
    assert copies
    for *sources, _ in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert source.rstrip("/") in allowed, f"COPY {source}: excluded from the context"
    # The same install as the README's for use (not an editable development install).
    [run] = [args for op, args in steps if op == "RUN" and "pip install" in args]
    pip = re.search(r"pip install ([^&]+)", run)[1].split()
    target = [word for word in pip if not word.startswith("-")]
    assert target == ["."]
    assert "`pip install .`" in (ROOT / "README.md").read_text()
    # A numeric non-root user: Kubernetes checks runAsNonRoot against the number.
    [user] = [args for op, args in steps if op == "USER"]
    uid = int(user.split(":")[0])
    assert uid > 0
    [job] = [t for w, t in pod_specs(k8s_objects()) if w.startswith("Job/")]
    assert job["spec"]["securityContext"]["runAsUser"] == uid
    entrypoint = next(args for op, args in steps if op == "ENTRYPOINT")
    assert "redis-cache" in entrypoint
    env = " ".join(args for op, args in steps if op == "ENV")
    assert "REDIS_CACHE_DIR=/cache" in env


def test_k8s_references_resolve() -> None:
    objects = k8s_objects()
    kinds = {kind for kind, _ in objects}
    assert {"ConfigMap", "Secret", "StatefulSet", "Service", "Job"} <= kinds

    def require(kind: str, name: str, key: str | None = None, where: str = "") -> None:
        assert (kind, name) in objects, f"{where} refers to {kind} {name}, not in deploy/k8s"
        if key is not None:
            assert key in k8s_data(objects[(kind, name)]), f"{where}: {kind} {name} lacks {key}"

    specs = pod_specs(objects)
    assert len(specs) >= 2
    for where, template in specs:
        spec = template["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        owner = objects[tuple(where.split("/"))]  # type: ignore[index]
        claims = {c["metadata"]["name"] for c in owner["spec"].get("volumeClaimTemplates", [])}
        for volume in volumes.values():
            if "configMap" in volume:
                for item in volume["configMap"].get("items", [{"key": None}]):
                    require("ConfigMap", volume["configMap"]["name"], item["key"], where)
            if "secret" in volume:
                for item in volume["secret"].get("items", [{"key": None}]):
                    require("Secret", volume["secret"]["secretName"], item["key"], where)
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    require("ConfigMap", source["configMapRef"]["name"], where=where)
                if "secretRef" in source:
                    require("Secret", source["secretRef"]["name"], where=where)
            for var in container.get("env", []):
                ref = var.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    r = ref["configMapKeyRef"]
                    require("ConfigMap", r["name"], r["key"], where)
                if "secretKeyRef" in ref:
                    r = ref["secretKeyRef"]
                    require("Secret", r["name"], r["key"], where)
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in claims, (
                    f"{where} mounts unknown volume {mount['name']}"
                )


def test_k8s_files_the_redis_container_reads_are_mounted() -> None:
    objects = k8s_objects()
    [template] = [t for where, t in pod_specs(objects) if where.startswith("StatefulSet/")]
    [container] = template["spec"]["containers"]
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    paths = [a for a in container.get("args", []) if a.startswith("/")]
    assert len(paths) >= 2  # redis.conf and users.acl
    for path in paths:
        [mount] = [
            m
            for m in container["volumeMounts"]
            if path.startswith(m["mountPath"].rstrip("/") + "/")
        ]
        volume = volumes[mount["name"]]
        source = volume.get("configMap") or volume.get("secret")
        assert source is not None, f"{path} is not on a ConfigMap or Secret volume"
        file_name = path[len(mount["mountPath"].rstrip("/")) + 1 :]
        assert file_name in {item["path"] for item in source["items"]}, path


def test_k8s_copies_of_deploy_files_are_identical() -> None:
    objects = k8s_objects()
    conf = (DEPLOY / "redis.conf").read_text()
    acl = (DEPLOY / "users.acl").read_text()
    conf_copies = [d["redis.conf"] for d in map(k8s_data, objects.values()) if "redis.conf" in d]
    acl_copies = [d["users.acl"] for d in map(k8s_data, objects.values()) if "users.acl" in d]
    assert conf_copies == [conf], "deploy/k8s/configmap.yaml's redis.conf differs from deploy/"
    assert acl_copies == [acl], "deploy/k8s/secret.yaml's users.acl differs from deploy/"


def test_k8s_services_select_the_statefulset_pods() -> None:
    objects = k8s_objects()
    [statefulset] = [o for (kind, _), o in objects.items() if kind == "StatefulSet"]
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    services = {name: o for (kind, name), o in objects.items() if kind == "Service"}
    headless = services.get(statefulset["spec"]["serviceName"])
    assert headless is not None, "serviceName is not a Service in deploy/k8s"
    assert headless["spec"].get("clusterIP") == "None"
    assert len(services) >= 2
    container_ports = {
        p["name"]: p["containerPort"]
        for c in statefulset["spec"]["template"]["spec"]["containers"]
        for p in c.get("ports", [])
    }
    for name, service in services.items():
        assert service["spec"]["selector"].items() <= pod_labels.items(), name
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in container_ports or target in container_ports.values(), name
    for (kind, name), policy in objects.items():
        if kind == "NetworkPolicy":
            assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
            admitted = [
                peer["podSelector"]["matchLabels"]
                for rule in policy["spec"]["ingress"]
                for peer in rule["from"]
            ]
            for where, template in pod_specs(objects):
                if where.startswith("Job/"):
                    labels = template["metadata"]["labels"]
                    assert any(a.items() <= labels.items() for a in admitted), (
                        f"{name} keeps {where} out"
                    )


def test_k8s_worker_settings_are_valid_and_name_the_client_service() -> None:
    objects = k8s_objects()
    [(where, job)] = [(w, t) for w, t in pod_specs(objects) if w.startswith("Job/")]
    env: dict[str, str] = {}
    for container in job["spec"]["containers"]:
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef") or source.get("secretRef")
            kind = "ConfigMap" if "configMapRef" in source else "Secret"
            env.update(k8s_data(objects[(kind, ref["name"])]))
    assert all(VARIABLE.fullmatch(name) for name in env), f"{where}: {sorted(env)}"
    settings = config.load(env)
    url = urllib.parse.urlsplit(settings.url or "")
    client_services = {
        name: o
        for (kind, name), o in objects.items()
        if kind == "Service" and o["spec"].get("clusterIP") != "None"
    }
    assert url.hostname in client_services, f"REDIS_CACHE_URL host {url.hostname}"
    ports = {p["port"] for p in client_services[url.hostname]["spec"]["ports"]}
    assert url.port in ports
    assert url.username == f"worker-{settings.namespace}"
    assert url.password == acl_password(url.username)
    assert settings.secret is not None
    mounts = {m["mountPath"] for c in job["spec"]["containers"] for m in c["volumeMounts"]}
    assert str(settings.dir) in mounts, "REDIS_CACHE_DIR is not a mounted volume"
    build_client(settings).close()


# --------------------------------------------------------------------------- real servers


@pytest.fixture(scope="module")
def acl_server() -> Iterator[RedisServer]:
    """deploy/redis.conf + deploy/users.acl, as the compose primary runs them."""
    server = start_data_node()
    yield server
    server.close()


@pytest.mark.real_redis
def test_redis_conf_starts_as_shipped() -> None:
    server = start_data_node(acl=False)
    try:
        with server.client() as client:  # no ACL file: default user, loopback only
            persistence = client.info("persistence")
            assert persistence["aof_enabled"] == 1
            settings = {
                name: client.config_get(name)[name]
                for name in (
                    "maxmemory-policy",
                    "maxmemory",
                    "appendfsync",
                    "save",
                    "protected-mode",
                    "lazyfree-lazy-eviction",
                    "timeout",
                )
            }
            assert settings == {
                "maxmemory-policy": "volatile-lru",
                "maxmemory": str(4 * 1024**3),
                "appendfsync": "everysec",
                "save": "",
                "protected-mode": "yes",
                "lazyfree-lazy-eviction": "yes",
                "timeout": "0",
            }
            max_value = int(config.DEFAULTS["REDIS_CACHE_MAX_VALUE_BYTES"])
            assert (
                int(client.config_get("proto-max-bulk-len")["proto-max-bulk-len"]) >= 2 * max_value
            )
            backlog = int(client.config_get("repl-backlog-size")["repl-backlog-size"])
            assert backlog >= 2 * max_value
            limits = client.config_get("client-output-buffer-limit")["client-output-buffer-limit"]
            replica_hard = int(limits.split("slave ")[1].split()[0])
            assert replica_hard >= 8 * max_value
            # The AOF goes to this server's dir (redis.conf says "dir ./").
            client.set(f"{NAMESPACE_PREFIX}probe", b"x")
        assert (server.dir / "appendonlydir").is_dir()
    finally:
        server.close()


@pytest.mark.real_redis
def test_redis_conf_keeps_entries_across_a_restart() -> None:
    server = start_data_node(acl=False)
    try:
        with server.client() as client:
            client.set(f"{NAMESPACE_PREFIX}kept", b"deterministic")
        server.kill()  # a crash, not a graceful shutdown: only the AOF can bring it back
        server.start()
        with server.client() as client:
            assert client.get(f"{NAMESPACE_PREFIX}kept") == b"deterministic"
    finally:
        server.close()


@pytest.mark.real_redis
def test_users_acl_confines_each_user(acl_server: RedisServer) -> None:
    with acl_server.client() as anonymous, pytest.raises(redis.AuthenticationError):
        anonymous.ping()  # the default user is disabled
    with as_user(acl_server, "worker-default") as worker:
        worker.set(f"{NAMESPACE_PREFIX}acl-test", b"v")
        assert worker.get(f"{NAMESPACE_PREFIX}acl-test") == b"v"
        for key in ("redis_cache:v2:other-team:acl-test", "unrelated"):
            with pytest.raises(redis.exceptions.NoPermissionError):
                worker.set(key, b"v")
            with pytest.raises(redis.exceptions.NoPermissionError):
                worker.get(key)
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker.config_get("maxmemory")
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker.flushall()
    with as_user(acl_server, "reader-default") as reader:
        assert reader.get(f"{NAMESPACE_PREFIX}acl-test") == b"v"
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader.set(f"{NAMESPACE_PREFIX}acl-test", b"overwritten")
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader.delete(f"{NAMESPACE_PREFIX}acl-test")
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader.get("redis_cache:v2:other-team:acl-test")
    with as_user(acl_server, "healthcheck") as probe:
        assert probe.ping()
        with pytest.raises(redis.exceptions.NoPermissionError):
            probe.get(f"{NAMESPACE_PREFIX}acl-test")
    with as_user(acl_server, "admin") as admin:
        assert admin.get(f"{NAMESPACE_PREFIX}acl-test") == b"v"
        admin.acl_log_reset()


@pytest.mark.real_redis
def test_health_checks_pass_only_with_the_right_password(acl_server: RedisServer) -> None:
    services = compose()["services"]
    objects = k8s_objects()
    [template] = [t for where, t in pod_specs(objects) if where.startswith("StatefulSet/")]
    [container] = template["spec"]["containers"]
    [auth] = [v for v in container["env"] if v["name"] == "REDISCLI_AUTH"]
    ref = auth["valueFrom"]["secretKeyRef"]
    k8s_password = k8s_data(objects[("Secret", ref["name"])])[ref["key"]]
    checks = [
        (probe_command(services[name]["healthcheck"]["test"]), service_env(services[name]))
        for name in ("redis-primary", "redis-replica")
    ]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = probe_command(container[probe]["exec"]["command"])
        checks.append((command, {"REDISCLI_AUTH": k8s_password}))
    for command, env in checks:
        assert run_probe(command, acl_server, env) == 0, command
        assert run_probe(command, acl_server, {**env, "REDISCLI_AUTH": "wrong"}) != 0, command


@pytest.mark.real_redis
def test_library_runs_as_the_worker_and_reader_users(
    acl_server: RedisServer, tmp_path: Path
) -> None:
    made: list[CacheInterface] = []

    def cache(cls: type[CacheInterface], user: str, **overrides: Any) -> Any:
        url = f"redis://{user}:{acl_password(user)}@{acl_server.host}:{acl_server.port}/0"
        settings = make_settings(
            tmp_path / f"machine-{len(made)}",
            url=url,
            namespace="default",
            secret=b"deploy-test-secret-0123456789",
            **overrides,
        )
        made.append(cls(settings))
        return made[-1]

    def kernel(x: int) -> tuple[int, str]:
        return (x, "compiled")

    try:
        with as_user(acl_server, "admin") as admin:
            admin.acl_log_reset()
        # fcache: a writer shares a result with a read-only consumer on another machine.
        writer = cache(FastCache, "worker-default", ttl=3600)
        assert writer.record()(kernel)(1) == (1, "compiled")
        reader = cache(FastCache, "reader-default", read_only=True)
        assert reader.record()(kernel)(1) == (1, "compiled")
        assert reader.stats().remote_hits == 1
        assert reader.record()(kernel)(2) == (2, "compiled")  # a miss: computed, not written
        # dcache under global determinism: lease lock, Lua COMMIT, consistency check (INFO).
        dwriter = cache(
            DeterministicCache, "worker-default", deterministic=True, determinism="global"
        )
        assert dwriter.record()(kernel)(3) == (3, "compiled")
        assert dwriter.stats().lock_acquisitions == 1
        dreader = cache(
            DeterministicCache,
            "reader-default",
            deterministic=True,
            determinism="global",
            read_only=True,
            strict="cached",
        )
        assert dreader.record()(kernel)(3) == (3, "compiled")
        assert dreader.stats().remote_hits == 1
        for c in made:
            assert c.stats().remote_errors == 0, (type(c).__name__, c.stats())
    finally:
        for c in made:
            c.close()  # writers publish their counters (HINCRBY, HINCRBYFLOAT) on close
    with as_user(acl_server, "admin") as admin:
        keys = sorted(k.decode() for k in admin.scan_iter(match="redis_cache:*"))
        assert keys and all(k.startswith(NAMESPACE_PREFIX) for k in keys), keys
        # Two values (kernel 2 was not written by the reader): the fcache one got
        # REDIS_CACHE_TTL (evictable under volatile-lru), the dcache one has none
        # (never evicted).
        ttls = sorted(admin.ttl(k) for k in keys if k.endswith("}"))
        assert len(ttls) == 2 and ttls[0] == -1 and 0 < ttls[1] <= 3600, ttls
        # dcache took its lease through Redis (the fence counter stays behind).
        assert any(k.endswith(":fence") for k in keys), keys
        assert admin.hgetall(f"{NAMESPACE_PREFIX}!stats"), "no counters were published"
    assert acl_denials(acl_server) == [], "the ACL users lack a permission the library needs"


@pytest.mark.real_redis
def test_operator_commands_run_as_the_namespace_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """doctor (run by the example workers before anything else), stats, dump, load and
    clear, with the settings of a worker and of a read-only consumer."""
    server = start_data_node()
    try:

        def as_env(user: str, **extra: str) -> None:
            for name in list(os.environ):
                if name.startswith("REDIS_CACHE_"):
                    monkeypatch.delenv(name)
            env = {
                "REDIS_CACHE_URL": f"redis://{user}:{acl_password(user)}@{server.host}:"
                f"{server.port}/0",
                "REDIS_CACHE_NAMESPACE": "default",
                "REDIS_CACHE_SECRET": "deploy-test-secret-0123456789",
                "REDIS_CACHE_DIR": str(tmp_path / user),
                **extra,
            }
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            config.reset()

        def run(*argv: str) -> str:
            code = cli.main(list(argv))
            out, err = capsys.readouterr()
            assert code == 0, f"redis-cache {' '.join(argv)} exited {code}:\n{out}\n{err}"
            return out

        def doctor() -> str:
            """doctor's report; it fails only the shipped CHANGE-ME placeholder passwords."""
            code = cli.main(["doctor"])
            out, err = capsys.readouterr()
            failed = re.findall(r"(?m)^FAIL +(\S+) ", out)
            assert (code, failed) == (1, ["credentials"]), f"doctor exited {code}:\n{out}\n{err}"
            return out

        as_env("worker-default", REDIS_CACHE_TTL="3600")
        writer = FastCache(config.load())
        try:
            assert writer.record()(shout)("kernel") == "KERNEL"
        finally:
            writer.close()
        doctor_report = doctor()
        for check in ("eviction", "persistence", "acl", "lease"):
            assert re.search(rf"(?m)^ok +{check} ", doctor_report), doctor_report
        assert "entries" in run("stats")
        run("dump", str(tmp_path / "worker.dump"))
        run("load", str(tmp_path / "worker.dump"))

        as_env("reader-default", REDIS_CACHE_READ_ONLY="1")
        doctor_report = doctor()
        assert re.search(r"(?m)^ok +acl ", doctor_report), doctor_report
        run("stats")
        run("dump", str(tmp_path / "reader.dump"))
        assert (tmp_path / "reader.dump").read_bytes() == (tmp_path / "worker.dump").read_bytes()

        as_env("worker-default")
        run("clear", "--yes")
        with as_user(server, "admin") as admin:
            assert list(admin.scan_iter(match="redis_cache:*")) == []
            # Only doctor's optional CONFIG GET (persistence, value size) was refused:
            # workers may not read the server's config (it holds masterauth).
            refused = {entry["object"] for entry in admin.acl_log()}
        assert refused <= {"config|get"}, refused
    finally:
        config.reset()
        server.close()


@pytest.mark.real_redis
@pytest.mark.slow
def test_sentinel_conf_watches_the_deployed_primary_and_fails_over(tmp_path: Path) -> None:
    replication = [
        "masteruser replication",
        f"masterauth {acl_password('replication')}",
        "replica-announce-ip 127.0.0.1",
        "repl-diskless-sync-delay 0",  # tests only: no 5 s wait for more replicas
    ]
    servers: list[RedisServer] = []
    made: list[CacheInterface] = []
    try:
        primary = start_data_node(tuple(replication))
        servers.append(primary)
        replica = start_data_node((*replication, f"replicaof {primary.host} {primary.port}"))
        servers.append(replica)
        sentinels = [start_sentinel(primary) for _ in range(3)]
        servers.extend(sentinels)

        def master_of(sentinel: RedisServer) -> tuple[str, int]:
            with sentinel.client() as client:
                host, port = client.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"
                )
            return (host.decode(), int(port))

        def settled(expected: RedisServer, other: RedisServer) -> bool:
            for sentinel in sentinels:
                if master_of(sentinel) != expected.address:
                    return False
                with sentinel.client() as client:
                    state = pairs(client.execute_command("SENTINEL", "MASTER", "mymaster"))
                    replicas = client.execute_command("SENTINEL", "REPLICAS", "mymaster")
                if "s_down" in state["flags"] or int(state["num-other-sentinels"]) < 2:
                    return False
                linked = {
                    int(r["port"])
                    for r in map(pairs, replicas)
                    if r["master-link-status"] == "ok" and "s_down" not in r["flags"]
                }
                if other.port not in linked:
                    return False
            return True

        wait_for(
            "the sentinels to see the primary, the replica and each other",
            lambda: settled(primary, replica),
        )

        # The sentinel healthcheck of compose.yaml passes against a deployed sentinel.
        services = compose()["services"]
        command = probe_command(services["sentinel-1"]["healthcheck"]["test"])
        command = command.replace("-p 26379 ", "")
        assert run_probe(command, sentinels[0], {}) == 0

        def worker(index: int) -> FastCache:
            env = {
                **service_env(services["worker"]),
                "REDIS_CACHE_SENTINELS": ",".join(f"{s.host}:{s.port}" for s in sentinels),
                "REDIS_CACHE_DIR": str(tmp_path / f"worker-{index}"),
            }
            made.append(FastCache(config.load(env)))
            return made[-1]

        def kernel(x: int) -> str:
            return f"kernel {x}"

        # The compose worker's settings (host-less URL) reach the primary as worker-default.
        assert worker(0).record()(kernel)(1) == "kernel 1"
        second = worker(1)
        assert second.record()(kernel)(1) == "kernel 1"
        assert second.stats().remote_hits == 1

        # Failover with the sentinel user's permissions; the replica becomes the primary.
        with sentinels[0].client() as client:
            wait_for(
                "SENTINEL FAILOVER to be accepted",
                lambda: client.execute_command("SENTINEL", "FAILOVER", "mymaster") == b"OK",
            )
        wait_for(
            "the replica to be promoted",
            lambda: all(master_of(s) == replica.address for s in sentinels),
        )
        with as_user(replica, "admin") as admin:
            wait_for("role:master", lambda: admin.info("replication")["role"] == "master")
        assert worker(2).record()(kernel)(2) == "kernel 2"  # written to the new primary
        fourth = worker(3)
        assert [fourth.record()(kernel)(x) for x in (1, 2)] == ["kernel 1", "kernel 2"]
        assert fourth.stats().remote_hits == 2  # both on the new primary
        for c in made:
            assert c.stats().remote_errors == 0, c.stats()
        for server in (primary, replica):
            assert acl_denials(server) == [], f"denied on {server.describe()}"
    finally:
        for c in made:
            c.close()
        for server in reversed(servers):
            server.close()
