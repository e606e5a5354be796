"""What names an entry: partials, methods, instances, lambdas, async, ``__main__`` and spawn.

Regression tests for the callee half of the key (issue 9, items 1, 2 and 16): two
different callables never share an entry silently, and a spawned worker shares the
entries of its parent's ``__main__`` functions.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from redis_cache import callees, exceptions, keys
from redis_cache.interfaces import FastCache
from tests.support.helpers import make_settings
from tests.support.servers import RedisServer

ROOT = Path(__file__).resolve().parents[1]


def mul(a: int, b: int) -> tuple[str, int]:
    return ("mul", a * b)


def add(a: int, b: int) -> tuple[str, int]:
    return ("add", a + b)


class Kernel:
    def __init__(self, arch: str) -> None:
        self.arch = arch

    def compile(self, src: str) -> str:
        return f"{src}@{self.arch}"

    @classmethod
    def family(cls, x: int) -> str:
        return f"{cls.__name__}:{x}"

    @staticmethod
    def plain(x: int) -> int:
        return x + 1

    def __call__(self, src: str) -> str:
        return self.compile(src)


class SmallKernel(Kernel):
    pass


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[FastCache]:
    c = FastCache(make_settings(tmp_path))
    yield c
    c.close()


# --------------------------------------------------------------------------- partials


def test_partials_of_different_functions_do_not_collide(cache: FastCache, tmp_path: Path) -> None:
    assert cache.record()(functools.partial(mul, 10))(3) == ("mul", 30)
    assert cache.record()(functools.partial(add, 10))(3) == ("add", 13)
    # A fresh process's view (the disk layer) tells them apart too.
    other = FastCache(make_settings(tmp_path))
    try:
        hit = other.get(functools.partial(add, 10), ((3,), {}))
        assert hit is not None and hit.value == ("add", 13)
    finally:
        other.close()


def test_bound_arguments_and_keywords_are_part_of_the_key(cache: FastCache) -> None:
    assert cache.record()(functools.partial(mul, 10))(3) == ("mul", 30)
    assert cache.record()(functools.partial(mul, 20))(3) == ("mul", 60)
    assert cache.record()(functools.partial(mul, b=2))(3) == ("mul", 6)
    assert cache.record()(functools.partial(mul, b=4))(3) == ("mul", 12)
    # Nested partials carry every level's arguments.
    inner = functools.partial(mul, b=5)
    assert cache.record()(functools.partial(inner, 2))() == ("mul", 10)
    assert cache.record()(functools.partial(functools.partial(mul, b=6), 2))() == ("mul", 12)


def test_a_partial_never_shares_a_key_with_a_plain_call(cache: FastCache) -> None:
    assert cache.insert(mul, ((10, 3), {}), ("plain", 0))
    assert cache.get(functools.partial(mul, 10), ((3,), {})) is None
    # Not even when a params encoder returns what the partial's payload looks like.
    partial = callees.callee_of(functools.partial(mul, 10), has_params_encoder=False)
    plain = callees.callee_of(mul, has_params_encoder=True)
    params = ((3,), {})
    forged = (partial.bound, params)
    assert keys.entry_digest(partial.name, "i", partial.payload(params)) != keys.entry_digest(
        plain.name, "i", plain.payload(forged)
    )
    assert plain.payload(params) is params  # plain functions keep their keys


class Arch(int):
    """An int subclass: keys refuse it (it may carry more than its value)."""


def test_unencodable_bound_arguments_need_a_params_encoder(cache: FastCache) -> None:
    bound = functools.partial(mul, Arch(90))
    with pytest.raises(exceptions.CustomParamsEncoderRequiredError) as info:
        cache.record()(bound)
    assert f"{__name__}.mul" in str(info.value)
    assert "0x" not in str(info.value)  # no repr of the partial or its arguments
    keyed = cache.record(custom_params_encoder=lambda b: ("arch-90", b))(bound)
    assert keyed(2) == ("mul", 180)


# --------------------------------------------------------------------------- methods


def test_methods_of_builtin_values_key_on_self(cache: FastCache) -> None:
    assert cache.record()("abc".upper)() == "ABC"
    assert cache.record()("xyz".upper)() == "XYZ"


def test_classmethods_key_on_the_class(cache: FastCache) -> None:
    assert cache.record()(Kernel.family)(1) == "Kernel:1"
    assert cache.record()(SmallKernel.family)(1) == "SmallKernel:1"


def test_staticmethods_are_their_function(cache: FastCache) -> None:
    assert cache.record()(Kernel.plain)(1) == 2
    assert cache.get(Kernel.__dict__["plain"], ((1,), {})) is not None


def test_instance_methods_and_callable_instances_need_a_params_encoder(
    cache: FastCache,
) -> None:
    sm90, sm80 = Kernel("sm90"), Kernel("sm80")
    for fn in (sm90.compile, sm90):
        with pytest.raises(exceptions.CustomParamsEncoderRequiredError) as info:
            cache.record()(fn)
        assert isinstance(info.value, TypeError)
    # The encoder stands for what the instance carries.
    for kernel in (sm90, sm80):
        method = cache.record(custom_params_encoder=lambda s, k=kernel: (k.arch, s))(
            kernel.compile
        )
        assert method("x") == f"x@{kernel.arch}"
        instance = cache.record(custom_params_encoder=lambda s, k=kernel: (k.arch, s))(kernel)
        assert instance("y") == f"y@{kernel.arch}"


@functools.lru_cache(maxsize=8)
def cached_square(x: int) -> int:
    return x * x


def test_decorator_objects_are_the_function_they_wrap(cache: FastCache) -> None:
    callee = callees.callee_of(cached_square, has_params_encoder=False)
    assert callee == callees.Callee(f"{__name__}.cached_square", None)
    assert cache.record()(cached_square)(3) == 9


def test_lambdas_need_a_params_encoder(cache: FastCache) -> None:
    with pytest.raises(exceptions.CustomParamsEncoderRequiredError) as info:
        cache.record()(lambda x: x + 1)
    assert "<lambda>" in str(info.value)
    assert cache.record(custom_params_encoder=lambda x: ("inc", x))(lambda x: x + 1)(1) == 2


def test_nested_functions_are_keyed_by_their_qualified_name() -> None:
    def inner(x: int) -> int:
        return x

    callee = callees.callee_of(inner, has_params_encoder=False)
    assert callee == callees.Callee(f"{__name__}.{inner.__qualname__}", None)
    assert "<locals>" in callee.name


# --------------------------------------------------------------------------- async


async def compile_async(x: int) -> int:
    return x


async def stream_async(x: int) -> AsyncIterator[int]:
    yield x


@pytest.mark.parametrize(
    "fn", [compile_async, stream_async, functools.partial(compile_async, 1)], ids=repr
)
def test_async_functions_are_refused_at_decoration(cache: FastCache, fn: Any) -> None:
    with pytest.raises(exceptions.UncacheableCallableError) as info:
        cache.record()(fn)
    assert isinstance(info.value, TypeError) and isinstance(info.value, exceptions.UserError)
    assert "async" in str(info.value)
    assert "SECRET" not in str(info.value)


def test_classmethod_objects_and_non_callables_are_refused(cache: FastCache) -> None:
    with pytest.raises(exceptions.UncacheableCallableError, match="below @classmethod"):
        cache.record()(classmethod(mul))  # type: ignore[arg-type]
    with pytest.raises(exceptions.UncacheableCallableError):
        cache.record()(42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- __main__


def main_function(name: str) -> Any:
    namespace: dict[str, Any] = {"__name__": "__mp_main__"}
    exec(f"def {name}(x):\n    return x\n", namespace)  # a function of __main__
    return namespace[name]


def test_mp_main_is_main_and_warns_once_per_function() -> None:
    fn = main_function("spawned_kernel")
    with pytest.warns(exceptions.MainModuleKeyWarning, match="notebook") as caught:
        assert callees.callee_of(fn, has_params_encoder=False).name == "__main__.spawned_kernel"
    assert caught[0].filename == __file__  # points at the caller, not at redis_cache
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        callees.callee_of(fn, has_params_encoder=False)  # once per function
        # A params encoder is the documented way to key on the code: no warning.
        callees.callee_of(main_function("versioned_kernel"), has_params_encoder=True)
    assert issubclass(exceptions.MainModuleKeyWarning, UserWarning)


SPAWN_SCRIPT = """
import multiprocessing, os, sys
import redis_cache

cache = getattr(redis_cache, sys.argv[1])

@cache.record()
def square(x):
    with open(os.environ["LEDGER"], "a") as ledger:
        ledger.write(f"{os.getpid()}\\n")
    return (x * x, os.getpid())

if __name__ == "__main__":
    parent = square(7)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        child = pool.apply(square, (7,))
    print(parent == child, parent[1] == os.getpid())
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fcache", "dcache"])
def test_a_spawned_worker_shares_its_parents_main_entries(
    kind: str, tmp_path: Path, redis_server: RedisServer, namespace: str
) -> None:
    script = tmp_path / "farm.py"
    script.write_text(textwrap.dedent(SPAWN_SCRIPT))
    ledger = tmp_path / "ledger"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_CACHE_")}
    env.update(
        LEDGER=str(ledger),
        PYTHONPATH=ROOT.as_posix(),
        REDIS_CACHE_DIR=str(tmp_path / "cache"),
        REDIS_CACHE_NAMESPACE=namespace,
    )
    if kind == "dcache":  # global determinism: parent and worker must agree through Redis
        env.update(REDIS_CACHE_DETERMINISTIC="1", REDIS_CACHE_URL=redis_server.url)
    done = subprocess.run(
        [sys.executable, str(script), kind], capture_output=True, text=True, env=env,
        cwd=tmp_path, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"], done.stdout + done.stderr
    assert len(ledger.read_text().splitlines()) == 1  # computed once, by the parent
    assert done.stderr.count("MainModuleKeyWarning") == 2  # the parent's and the worker's
