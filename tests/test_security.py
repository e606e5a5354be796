"""Who may put what into the cache, and what never leaks out of it.

- Nothing read from Redis or disk is unpickled without a valid HMAC made with our
  secret: planted pickles (unsigned with a valid checksum, or signed with another key)
  never run, for fcache and dcache, with and without a secret.
- Oversize values are refused by the remote layer (dcache raises, fcache keeps
  them local and counts them).
- A namespace outside the ACL user's key pattern gets NOPERM: fcache fails open,
  dcache raises ``RemoteUnavailableError`` naming the server, never the password.
- A tampered signed entry, or a valid entry copied under another key, is refused.
- Passwords and ``REDIS_CACHE_SECRET`` appear in no log record, exception or repr.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import struct
import traceback
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import redis_cache
from redis_cache import config, exceptions
from redis_cache.codec import Codec, unsigned_tag
from redis_cache.interfaces import CacheInterface, DeterministicCache, FastCache
from tests.support.helpers import exploit_envelope, make_settings
from tests.support.servers import RedisServer, free_port, require_binary

SECRET = b"our-fleet-secret-7f3a9c2e51"
OTHER_SECRET = b"their-fleet-secret-0b8d6e4a"
PASSWORD = "pw-Zq81-team-a-Kx4"


def kernel(x: int) -> tuple[int, str]:
    return (x, "kernel")


# --------------------------------------------------------------------------- helpers


def entry_key(cache: CacheInterface, fn: Any, x: int) -> Any:
    return cache.entry_key(fn, ((x,), {}))


def value_key(cache: CacheInterface, fn: Any, x: int) -> str:
    backend = cache._runtime()
    assert backend.redis is not None
    return backend.redis.value_key(entry_key(cache, fn, x))


def exception_texts(exc: BaseException) -> str:
    """Everything a user is shown of an exception: messages, reprs, chain, traceback.

    The chain is walked as tracebacks (and error trackers) display it: ``__cause__``,
    else ``__context__`` unless suppressed by ``raise ... from None``.
    """
    parts = ["".join(traceback.format_exception(type(exc), exc, exc.__traceback__))]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current), repr(current.args)]
        if current.__cause__ is not None:
            current = current.__cause__
        elif not current.__suppress_context__:
            current = current.__context__
        else:
            current = None
    return "\n".join(parts)


def log_texts(records: list[logging.LogRecord]) -> str:
    formatter = logging.Formatter()
    parts = []
    for record in records:
        parts += [record.getMessage(), repr(record.args), record.name]
        if record.exc_info:
            parts.append(formatter.formatException(record.exc_info))
        if record.exc_text:
            parts.append(record.exc_text)
    return "\n".join(parts)


# --------------------------------------------------------------------------- planted pickles


def test_the_planted_pickle_would_run_if_loaded(tmp_path: Path) -> None:
    """Control: the marker below really is created when the payload is unpickled."""
    marker = tmp_path / "pwned"
    blob = exploit_envelope(b"k", marker, signed_with=None)
    pickle.loads(blob[13 + 8 :]).close()
    assert marker.exists()


LAYERS = [pytest.param("redis", marks=pytest.mark.real_redis), "disk"]


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("signed_with", [None, OTHER_SECRET], ids=["unsigned", "wrong-key"])
@pytest.mark.parametrize("secret", [None, SECRET], ids=["no-secret", "secret"])
@pytest.mark.parametrize("interface", ["fcache", "dcache"])
def test_planted_pickle_is_never_executed(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    namespace: str,
    interface: str,
    secret: bytes | None,
    signed_with: bytes | None,
    layer: str,
) -> None:
    marker = tmp_path / "pwned"
    overrides: dict[str, Any] = {"namespace": namespace, "secret": secret, "stats_interval": 0}
    server: RedisServer | None = None
    if layer == "redis":
        server = request.getfixturevalue("redis_server")
        overrides["url"] = server.url
    cache: CacheInterface
    if interface == "fcache":
        cache = FastCache(make_settings(tmp_path / "disk", **overrides))
    else:
        determinism = "global" if layer == "redis" else "local"
        cache = DeterministicCache(
            make_settings(tmp_path / "disk", deterministic=True, determinism=determinism,
                          **overrides)
        )  # fmt: skip
    key = entry_key(cache, kernel, 1)
    blob = exploit_envelope(key.key_id, marker, signed_with=signed_with)
    if server is not None:
        server.client().set(value_key(cache, kernel, 1), blob)
    else:
        path = Path(cache._runtime().disk.path(key))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)

    def still_there() -> bytes | None:
        if server is not None:
            return server.client().get(value_key(cache, kernel, 1))
        path = Path(cache._runtime().disk.path(key))
        return path.read_bytes() if path.exists() else None

    unverified = signed_with is not None  # a signature that does not verify here
    if interface == "fcache":
        assert cache.get(kernel, ((1,), {})) is None
        assert cache.record()(kernel)(1) == (1, "kernel")
        stats = cache.stats()
        # An unverified entry stays and is met again by record's lookup; a corrupt one
        # was repaired by the first lookup.
        assert (stats.unverified_entries, stats.corrupt_entries) == (
            (2, 0) if unverified else (0, 1)
        )
        if unverified:
            assert still_there() == blob  # another fleet's entry: never deleted
    else:
        with pytest.raises(exceptions.ValueDecodingError) as info:
            cache.record()(kernel)(1)
        expected = exceptions.UnverifiedEntryError if unverified else exceptions.CorruptEntryError
        assert isinstance(info.value, expected), repr(info.value)
        assert key.digest in str(info.value)
        assert still_there() == blob  # dcache never repairs
    assert not marker.exists(), "a planted pickle was executed"
    cache.close()


# --------------------------------------------------------------------------- expansion


@pytest.mark.real_redis
def test_a_planted_expanding_entry_is_a_miss_that_costs_the_reader_little(
    redis_server: RedisServer, tmp_path: Path, namespace: str
) -> None:
    # ~2 KiB in Redis that msgpack would turn into a million 64-byte dicts.
    cache = FastCache(make_settings(tmp_path, url=redis_server.url, namespace=namespace))
    key = entry_key(cache, kernel, 1)
    raw = b"\xdd" + (1 << 20).to_bytes(4, "big") + b"\x80" * (1 << 20)
    stored = zlib.compress(raw, 9)
    header = struct.pack(">2sBBBQ", b"RC", 1, 1, 0x01, len(raw))
    blob = header + unsigned_tag(key.key_id, header, stored) + stored
    redis_server.client().set(value_key(cache, kernel, 1), blob)
    tracemalloc.start()
    try:
        assert cache.record()(kernel)(1) == (1, "kernel")  # a miss, computed here
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        cache.close()
    assert peak < 8 << 20  # not the 72 MiB the entry would decode to
    assert cache.stats().corrupt_entries == 1
    assert redis_server.client().get(value_key(cache, kernel, 1)) != blob  # repaired


# --------------------------------------------------------------------------- oversize


@pytest.mark.real_redis
def test_oversize_values_are_refused_remotely(
    tmp_path: Path, redis_server: RedisServer, namespace: str
) -> None:
    big = os.urandom(4096)

    def produce(x: int) -> bytes:
        return big

    client = redis_server.client()
    common = {"url": redis_server.url, "namespace": namespace, "max_value_bytes": 1024,
              "stats_interval": 0}  # fmt: skip
    d = DeterministicCache(
        make_settings(tmp_path / "d", deterministic=True, determinism="global", **common)
    )
    with pytest.raises(exceptions.ValueTooLargeError) as info:
        d.record()(produce)(1)
    assert "REDIS_CACHE_MAX_VALUE_BYTES=1024" in str(info.value)
    with pytest.raises(exceptions.ValueTooLargeError):
        d.insert(produce, ((2,), {}), big)
    for x in (1, 2):
        assert client.exists(value_key(d, produce, x), value_key(d, produce, x) + ":lock") == 0

    f = FastCache(make_settings(tmp_path / "f", **common))
    assert f.record()(produce)(3) == big
    assert f.insert(produce, ((4,), {}), big) is True  # stored locally
    assert f.stats().oversize_values == 2
    assert f.stats().remote_errors == 0
    for x in (3, 4):
        assert client.exists(value_key(f, produce, x)) == 0
    f.close()
    again = FastCache(make_settings(tmp_path / "f", **common))  # same machine: from disk
    assert again.get(produce, ((3,), {})) == redis_cache.Hit(big)
    assert again.stats().disk_hits == 1
    again.close()
    d.close()


# --------------------------------------------------------------------------- ACL


@pytest.fixture(scope="module")
def acl_server() -> Iterator[RedisServer]:
    require_binary("redis-server")
    with RedisServer(acl=[f"user team-a on >{PASSWORD} ~redis_cache:v2:team-a:* +@all"]) as s:
        yield s


@pytest.mark.real_redis
def test_acl_confines_a_user_to_its_namespace(
    tmp_path: Path, acl_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"redis://team-a:{PASSWORD}@127.0.0.1:{acl_server.port}/0"
    common = {"url": url, "retry_deadline": 2.0, "stats_interval": 0}

    # Its own namespace works for both interfaces.
    f_ok = FastCache(make_settings(tmp_path / "a", namespace="team-a", **common))
    assert f_ok.insert(kernel, ((1,), {}), (1, "team-a"))
    assert f_ok.stats().remote_errors == 0
    d_ok = DeterministicCache(
        make_settings(tmp_path / "a", namespace="team-a", deterministic=True,
                      determinism="global", **common)
    )  # fmt: skip
    assert d_ok.record()(kernel)(2) == (2, "kernel")
    keys = acl_server.client().keys("redis_cache:v2:team-a:*")
    assert len([k for k in keys if not k.endswith((b":fence", b":signal"))]) == 2

    # Another namespace: NOPERM. fcache fails open, dcache fails closed at once.
    f_other = FastCache(make_settings(tmp_path / "b", namespace="team-b", **common))
    assert f_other.record()(kernel)(3) == (3, "kernel")
    assert f_other.stats().remote_errors >= 1
    d_other = DeterministicCache(
        make_settings(tmp_path / "b", namespace="team-b", deterministic=True,
                      determinism="global", **common)
    )  # fmt: skip
    with pytest.raises(exceptions.RemoteUnavailableError) as info:
        d_other.record()(kernel)(4)
    message = str(info.value)
    assert f"127.0.0.1:{acl_server.port}" in message
    assert "NoPermissionError" in message or "NOPERM" in message, message
    assert "after 1 attempts" in message, f"a permanent error was retried: {message}"
    assert acl_server.client().keys("redis_cache:v2:team-b:*") == []
    assert PASSWORD not in exception_texts(info.value)
    assert PASSWORD not in log_texts(caplog.records)
    for cache in (f_ok, d_ok, f_other, d_other):
        cache.close()


# --------------------------------------------------------------------------- tampering


def flip(blob: bytes, offset: int) -> bytes:
    return blob[:offset] + bytes([blob[offset] ^ 0x01]) + blob[offset + 1 :]


@pytest.mark.real_redis
@pytest.mark.parametrize("where", ["tag", "payload", "header"])
@pytest.mark.parametrize("interface", ["fcache", "dcache"])
def test_tampered_signed_entry_is_a_miss_counted_and_left_alone(
    tmp_path: Path, redis_server: RedisServer, namespace: str, interface: str, where: str
) -> None:
    def make(machine: str) -> CacheInterface:
        settings = make_settings(tmp_path / machine, url=redis_server.url, namespace=namespace,
                                 secret=SECRET, stats_interval=0)  # fmt: skip
        if interface == "fcache":
            return FastCache(settings)
        return DeterministicCache(
            dataclasses.replace(settings, deterministic=True, determinism="global")
        )

    calls: list[int] = []

    def compile_text(x: int) -> str:
        calls.append(x)
        return f"kernel source {x} " * 4

    writer = make("writer")
    assert writer.record()(compile_text)(1) == compile_text(1)
    vkey = value_key(writer, compile_text, 1)
    client = redis_server.client()
    good = client.get(vkey)
    assert good is not None and good[4] & 0x04  # signed
    offset = {"tag": 13 + 7, "payload": len(good) - 1, "header": 5 + 7}[where]
    tampered = flip(good, offset)
    client.set(vkey, tampered)

    reader = make("reader")
    if interface == "fcache":
        assert reader.get(compile_text, ((1,), {})) is None
        assert reader.stats().unverified_entries == 1
    else:
        with pytest.raises(exceptions.UnverifiedEntryError) as info:
            reader.get(compile_text, ((1,), {}))
        assert entry_key(reader, compile_text, 1).digest in str(info.value)
        assert reader.stats().unverified_entries == 1
    assert client.get(vkey) == tampered  # counted, never deleted
    writer.close()
    reader.close()


@pytest.mark.real_redis
@pytest.mark.parametrize("secret", [SECRET, None], ids=["signed", "unsigned"])
@pytest.mark.parametrize("interface", ["fcache", "dcache"])
def test_entry_copied_under_another_key_is_refused(
    tmp_path: Path, redis_server: RedisServer, namespace: str, interface: str, secret: Any
) -> None:
    settings = make_settings(tmp_path, url=redis_server.url, namespace=namespace, secret=secret,
                             stats_interval=0)  # fmt: skip
    if interface == "dcache":
        settings = dataclasses.replace(settings, deterministic=True, determinism="global")
    kind = FastCache if interface == "fcache" else DeterministicCache
    cache = kind(settings)
    writer = kind(dataclasses.replace(settings, dir=tmp_path / "writer"))
    assert writer.insert(kernel, ((1,), {}), (1, "for key one"))
    client = redis_server.client()
    copied = client.get(value_key(cache, kernel, 1))
    target = value_key(cache, kernel, 2)
    client.set(target, copied)  # a valid entry, under the wrong key
    if interface == "fcache":
        assert cache.get(kernel, ((2,), {})) is None
        stats = cache.stats()
        if secret is None:
            assert stats.corrupt_entries == 1  # checksum bound to the key: corrupt, repaired
            assert client.exists(target) == 0
        else:
            assert stats.unverified_entries == 1  # signature bound to the key: left alone
            assert client.get(target) == copied
        assert cache.record()(kernel)(2) == (2, "kernel")
    else:
        expected = (
            exceptions.CorruptEntryError if secret is None else (exceptions.UnverifiedEntryError)
        )
        with pytest.raises(expected):
            cache.record()(kernel)(2)
        assert client.get(target) == copied
    assert cache.get(kernel, ((1,), {})) == redis_cache.Hit((1, "for key one"))
    cache.close()
    writer.close()


# --------------------------------------------------------------------------- secrets


def secretive_workload(url: str, tmp_path: Path, namespace: str) -> list[BaseException]:
    """fcache and dcache calls against ``url``; returns the exceptions dcache raised."""
    common = {
        "url": url,
        "namespace": namespace,
        "secret": SECRET,
        "connect_timeout": 0.2,
        "socket_timeout": 0.5,
        "retry_deadline": 0.3,
        "breaker_cooldown": 0.0,
        "stats_interval": 0.05,  # the publisher's failures are logged too
    }
    f = FastCache(make_settings(tmp_path / "f", **common))
    wrapped = f.record()(kernel)
    assert [wrapped(i) for i in range(5)] == [kernel(i) for i in range(5)]
    assert f.insert(kernel, ((10,), {}), (10, "x")) is True
    assert f.get(kernel, ((11,), {})) is None
    d = DeterministicCache(
        make_settings(tmp_path / "d", deterministic=True, determinism="global", **common)
    )
    raised: list[BaseException] = []
    for call in (lambda: d.record()(kernel)(1), lambda: d.get(kernel, ((1,), {}))):
        with pytest.raises(exceptions.RemoteUnavailableError) as info:
            call()
        raised.append(info.value)
    f.close()
    d.close()
    return raised


@pytest.mark.real_redis
@pytest.mark.parametrize("situation", ["server-down", "wrong-password", "weird-password"])
def test_secrets_never_reach_logs_or_exceptions(
    tmp_path: Path, namespace: str, caplog: pytest.LogCaptureFixture, situation: str
) -> None:
    caplog.set_level(logging.DEBUG)
    hidden = [PASSWORD, SECRET.decode()]
    if situation == "server-down":
        raised = secretive_workload(
            f"redis://team-a:{PASSWORD}@127.0.0.1:{free_port()}/0", tmp_path, namespace
        )
    elif situation == "wrong-password":
        with RedisServer(password="the-right-one-0c1d") as server:
            raised = secretive_workload(
                f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0", tmp_path, namespace
            )
            hidden.append("the-right-one-0c1d")
    else:  # characters that end a URL's authority early: /, ?, #
        raised = []
        for i, sep in enumerate("/?#"):
            weird = f"left-Qz{i}{sep}right-Wk{i}"
            hidden += [f"left-Qz{i}", f"right-Wk{i}"]
            url = f"redis://user:{weird}@127.0.0.1:{free_port()}/0"
            with pytest.raises(exceptions.RemoteUnavailableError) as info:
                DeterministicCache(
                    make_settings(tmp_path / str(i), url=url, deterministic=True,
                                  determinism="global", retry_deadline=0.2, connect_timeout=0.1,
                                  stats_interval=0)
                ).get(kernel, ((1,), {}))  # fmt: skip
            raised.append(info.value)
            f = FastCache(
                make_settings(tmp_path / f"f{i}", url=url, connect_timeout=0.1, stats_interval=0)
            )
            assert f.record()(kernel)(1) == (1, "kernel")
            f.close()
    assert raised and caplog.records, "the workload should have failed and logged"
    texts = log_texts(caplog.records) + "\n".join(exception_texts(e) for e in raised)
    for secret in hidden:
        assert secret not in texts, f"{secret!r} leaked"


def test_configuration_errors_never_echo_secrets(tmp_path: Path) -> None:
    base = {"REDIS_CACHE_DIR": str(tmp_path), "REDIS_CACHE_STATS_INTERVAL": "0"}
    short = "short-7x"
    with pytest.raises(exceptions.InvalidSettingError) as info:
        config.load({**base, "REDIS_CACHE_SECRET": short})
    assert short not in exception_texts(info.value)
    for url in (
        f"http://user:{PASSWORD}@host:6379/0",
        f"redis://user:{PASSWORD}@/0",
        f"redis://user:{PASSWORD}@host:port/0",
    ):
        try:
            settings = config.load({**base, "REDIS_CACHE_URL": url})
        except exceptions.InvalidSettingError as exc:
            assert PASSWORD not in exception_texts(exc), url
            continue
        with pytest.raises(exceptions.CacheError) as raised:
            FastCache(settings)._runtime().redis.client()  # type: ignore[union-attr]
        assert PASSWORD not in exception_texts(raised.value), url


def test_reprs_never_show_secrets(tmp_path: Path) -> None:
    url = f"redis://team-a:{PASSWORD}@127.0.0.1:6399/0"
    env = {"REDIS_CACHE_URL": url, "REDIS_CACHE_SECRET": SECRET.decode(),
           "REDIS_CACHE_DIR": str(tmp_path), "REDIS_CACHE_STATS_INTERVAL": "0"}  # fmt: skip
    for settings in (config.load(env), make_settings(tmp_path, url=url, secret=SECRET)):
        for text in (repr(settings), str(settings), settings.server_name):
            assert SECRET.decode() not in text
            assert PASSWORD not in text
        assert settings.server_name == "redis://127.0.0.1:6399/0"
    for c in (Codec(SECRET), Codec(SECRET, compression="zstd")):
        assert SECRET.decode() not in repr(c) and SECRET.decode() not in str(c)
    cache = FastCache(make_settings(tmp_path, url=url, secret=SECRET, stats_interval=0))
    backend = cache._runtime()
    assert backend.redis is not None
    for obj in (cache, backend, backend.codec, backend.redis.provider, cache.stats()):
        assert PASSWORD not in repr(obj) and SECRET.decode() not in repr(obj)
    cache.close()
