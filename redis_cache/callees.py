"""What a callable is for a cache key: a module-qualified name and the state it carries.

The bare ``__name__`` collides across modules, and a ``functools.partial`` or a
bound method carries state that changes what a call computes. Each callable is
named by the function that runs (``__mp_main__``, the entry script in ``spawn``
workers, read as ``__main__``, so a pool shares its parent's entries) plus its
canonically-encodable bound state. The rules, with their reasons, are listed on
:func:`callee_of` and in docs/concepts.md.
"""

from __future__ import annotations

import functools
import inspect
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

from . import exceptions, keys

__all__ = ["Callee", "callee_of"]


class Callee(NamedTuple):
    """What a callable is for a key: a name for the entry, and the state it carries.

    ``name`` is ``f"{module}.{qualname}"`` of the function that runs (``__mp_main__``,
    the entry script in ``spawn`` workers, read as ``__main__``); it names the entry
    in Redis keys, dumps and messages. ``bound`` is canonically encodable data the
    callable carries (a partial's arguments, a method's ``self`` or class), ``None``
    for a plain function.
    """

    name: str
    bound: object = None

    def payload(self, params: object) -> object:
        """What a call with ``params`` hashes (``params``: ``(args, kwargs)`` or what a
        params encoder returned).

        A plain function hashes ``params`` itself. A callable with bound state hashes
        its state and ``params`` under a type tag of their own that no parameter value
        can produce, so ``partial(f, 10)(3)`` never shares a key with any call of ``f``,
        whatever a params encoder returns.
        """
        return params if self.bound is None else keys.Bound(self.bound, params)


# What the params encoder stands for when a callable carries state keys cannot encode.
_BY_ENCODER = "custom_params_encoder"
_ASYNC_FLAGS = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE
_DESCRIPTORS = (
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
    types.ClassMethodDescriptorType,
)
_warned_main: set[str] = set()


def callee_of(fn: Callable[..., Any], *, has_params_encoder: bool) -> Callee:
    """The :class:`Callee` of ``fn``: call it when decorating, and for ``get``/``insert``.

    The rules (docs/concepts.md, "What names an entry"):

    * a function is its module-qualified name; what it reads from globals or from an
      enclosing function is not part of the key;
    * a ``functools.partial`` is the function it wraps plus its bound arguments and
      keywords, recursively;
    * a method bound to a class (a classmethod) is its function plus the class's name;
      a method bound to an instance is its function plus ``self``, which must be
      canonically encodable;
    * a class is its qualified name (calling it constructs); a decorator object with
      ``__wrapped__`` (``functools.lru_cache``) is the function it wraps;
    * lambdas (their names do not tell them apart) and callable instances (their
      state is not encodable) need a ``custom_params_encoder``, as does any bound
      state keys cannot encode: the encoder then stands for it.

    Raises :class:`UncacheableCallableError` for ``async def`` functions and async
    generators (their result is a coroutine or iterator, never a value to store) and
    for objects that are not callable; :class:`CustomParamsEncoderRequiredError` when
    a params encoder is needed and missing. Warns :class:`MainModuleKeyWarning` once
    per function of ``__main__`` (unless a params encoder is given).
    """
    if isinstance(fn, classmethod):
        raise exceptions.UncacheableCallableError(
            "a classmethod object cannot be recorded: apply record() below @classmethod"
        )
    if isinstance(fn, staticmethod):
        fn = fn.__func__
    if not callable(fn):
        raise exceptions.UncacheableCallableError(
            f"a {type(fn).__qualname__} is not callable; record() and get/insert take functions"
        )
    _refuse_async(fn)
    name, bound = _identify(fn, has_params_encoder)
    if bound is not None:
        try:
            keys.encode(bound)
        except exceptions.KeyEncodingError as exc:
            if not has_params_encoder:
                raise exceptions.CustomParamsEncoderRequiredError(
                    name, f"what the callable carries cannot be part of a key ({exc})"
                ) from exc
            bound = _BY_ENCODER
    if name.startswith("__main__.") and not has_params_encoder:
        _warn_main(name)
    return Callee(name, bound)


def _identify(fn: Any, has_params_encoder: bool) -> tuple[str, object]:
    """``(name, bound)`` of ``fn``; ``bound`` may still be unencodable (checked above)."""
    kind = type(fn)
    if kind is types.FunctionType:
        name = f"{_module(fn)}.{fn.__qualname__}"
        if "<lambda>" in fn.__qualname__ and not has_params_encoder:
            raise exceptions.CustomParamsEncoderRequiredError(
                name, "lambdas of one scope share the name <lambda>, so their entries would mix"
            )
        return name, None
    if isinstance(fn, functools.partial):
        name, inner = _identify(fn.func, has_params_encoder)
        return name, ("partial", tuple(fn.args), dict(fn.keywords), inner)
    if kind is types.MethodType:
        name, inner = _identify(fn.__func__, has_params_encoder)
        owner = fn.__self__
        if isinstance(owner, type):
            return name, ("class", _qualified(owner), inner)
        return name, ("self", owner, inner)
    if kind in (types.BuiltinFunctionType, types.MethodWrapperType):
        owner = getattr(fn, "__self__", None)
        if owner is None or isinstance(owner, types.ModuleType):
            return f"{_module(fn)}.{fn.__qualname__}", None
        module = _normalized(type(owner).__module__) if not isinstance(owner, type) else None
        name = f"{module or _module(owner)}.{fn.__qualname__}"
        if isinstance(owner, type):
            return name, ("class", _qualified(owner), None)
        return name, ("self", owner, None)
    if isinstance(fn, _DESCRIPTORS):
        return f"{_module(fn.__objclass__)}.{fn.__qualname__}", None
    if isinstance(fn, type):
        return _qualified(fn), None
    wrapped = getattr(fn, "__wrapped__", None)
    if wrapped is not None and callable(wrapped):
        # A decorator object around a function (functools.lru_cache, update_wrapper):
        # the entry is the function's, as it is for a decorator that is a function.
        return _identify(wrapped, has_params_encoder)
    if not has_params_encoder:
        raise exceptions.CustomParamsEncoderRequiredError(
            _qualified(kind),
            "a callable instance keeps state that keys cannot see; its encoder must "
            "return what distinguishes its calls",
        )
    return _qualified(kind), _BY_ENCODER


def _refuse_async(fn: Any) -> None:
    target = fn
    while True:  # the function a partial or a bound method runs
        if isinstance(target, functools.partial):
            target = target.func
        elif type(target) is types.MethodType:
            target = target.__func__
        else:
            break
    code = getattr(target, "__code__", None)
    if code is None and not isinstance(target, type):  # a callable instance
        code = getattr(type(target).__call__, "__code__", None)
    if code is not None and code.co_flags & _ASYNC_FLAGS:
        raise exceptions.UncacheableCallableError(
            f"{_module(target)}.{getattr(target, '__qualname__', type(target).__qualname__)} "
            "is an async function (or async generator): calling it returns a coroutine, not "
            "a result to store; record a synchronous function that the coroutine awaits "
            "instead"
        )


def _normalized(module: str | None) -> str:
    """``__mp_main__`` (the entry script in spawn/forkserver workers) is ``__main__``;
    code with no module (``exec`` without ``__name__``) counts as ``__main__`` too."""
    return "__main__" if module in (None, "__mp_main__") else str(module)


def _module(obj: Any) -> str:
    return _normalized(getattr(obj, "__module__", None))


def _qualified(cls: type) -> str:
    return f"{_module(cls)}.{cls.__qualname__}"


def _warn_main(name: str) -> None:
    if name in _warned_main:
        return
    _warned_main.add(name)
    warnings.warn(
        f"{name} is a function of __main__: its cache entries are shared with every script "
        "and notebook cell that defines a function of this name, whatever its code. To key "
        "on the code's version, pass custom_params_encoder returning a version with the "
        "parameters, e.g. record(custom_params_encoder=lambda *a, **k: ('v1', a, k)).",
        exceptions.MainModuleKeyWarning,
        stacklevel=_outside_package(),
    )


def _outside_package() -> int:
    """A ``stacklevel`` for :func:`warnings.warn` from our caller that points at user code."""
    package = __file__.rsplit("/", 1)[0].rsplit("\\", 1)[0]
    frame = sys._getframe(2)  # the caller of _warn_main's caller
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level
