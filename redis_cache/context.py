"""Isolation context: what besides the arguments decides whether a cached result is valid.

The forms keep the names of PyTorch Inductor's caching module so isolation schemas
written for it work here. Forms that need torch or triton are computed when those
are importable and are ``None`` otherwise, so a torch-free farm shares keys with
itself and never with a torch build whose results could differ.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from collections.abc import Callable
from functools import cache
from typing import Any, TypedDict


class SelectedRuntimeContext(TypedDict):
    inductor_configs: bool
    torch_determinism_configs: bool
    cuda_matmul_precision_configs: bool


class SelectedCompileContext(TypedDict):
    torch_version_hash: bool
    triton_version_hash: bool
    runtime: bool
    runtime_version: bool
    accelerator_properties: bool


class IsolationSchema(TypedDict):
    """Which forms of context become part of every key (``True``: all, ``False``: none)."""

    runtime_context: SelectedRuntimeContext | bool
    compile_context: SelectedCompileContext | bool


DEFAULT_ISOLATION_SCHEMA = IsolationSchema(runtime_context=True, compile_context=True)

RUNTIME_FORMS = ("inductor_configs", "torch_determinism_configs", "cuda_matmul_precision_configs")
COMPILE_FORMS = (
    "torch_version_hash",
    "triton_version_hash",
    "runtime",
    "runtime_version",
    "accelerator_properties",
)


@cache
def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _torch() -> Any:
    """torch, imported only when installed; ``None`` otherwise."""
    if "torch" in sys.modules:
        return sys.modules["torch"]
    if not _importable("torch"):
        return None
    import torch  # noqa: PLC0415 - optional, heavy: imported only when a form needs it

    return torch


# Runtime forms: re-read on every call, because a program may flip these between calls.


def _inductor_configs() -> Any:
    torch = _torch()
    if torch is None:
        return None
    from torch._inductor import config  # noqa: PLC0415

    get_hash = getattr(config, "get_hash", None)
    if get_hash is not None:
        # Inductor's own digest of its settings, cached until one changes: the same
        # settings its compile caches key on, for microseconds instead of a full dump.
        return get_hash().hex()
    return config.save_config_portable(ignore_private_configs=False)


def _torch_determinism_configs() -> Any:
    torch = _torch()
    if torch is None:
        return None
    return {
        "torch.are_deterministic_algorithms_enabled": torch.are_deterministic_algorithms_enabled(),
        "torch.is_deterministic_algorithms_warn_only_enabled": (
            torch.is_deterministic_algorithms_warn_only_enabled()
        ),
        "torch.utils.deterministic.fill_uninitialized_memory": (
            torch.utils.deterministic.fill_uninitialized_memory
        ),
    }


def _cuda_matmul_precision_configs() -> Any:
    torch = _torch()
    if torch is None:
        return None
    matmul = torch.backends.cuda.matmul
    return {
        "torch.backends.cuda.matmul.fp32_precision": getattr(matmul, "fp32_precision", None),
        "torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction": (
            matmul.allow_fp16_reduced_precision_reduction
        ),
        "torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction": (
            matmul.allow_bf16_reduced_precision_reduction
        ),
    }


# Compile forms: process-static, computed once.


@cache
def _torch_version_hash() -> str | None:
    torch = _torch()
    if torch is None:
        return None
    try:  # Inductor's own key hashes torch's sources: two builds of one version differ
        from torch._inductor.codecache import torch_key  # noqa: PLC0415

        return hashlib.sha256(torch_key()).hexdigest()
    except Exception:  # older or stripped builds: the version string is the best we have
        return hashlib.sha256(str(torch.__version__).encode()).hexdigest()


@cache
def _triton_version_hash() -> str | None:
    if not _importable("triton"):
        return None
    try:
        from torch._inductor.runtime.triton_compat import triton_key  # noqa: PLC0415

        return hashlib.sha256(str(triton_key()).encode()).hexdigest()
    except Exception:
        import triton  # noqa: PLC0415

        return hashlib.sha256(str(triton.__version__).encode()).hexdigest()


@cache
def _runtime() -> str | None:
    torch = _torch()
    if torch is None:
        return None
    return "CUDA" if torch.version.cuda else "HIP" if torch.version.hip else None


@cache
def _runtime_version() -> str | None:
    torch = _torch()
    runtime = _runtime()
    if torch is None or runtime is None:
        return None
    return str(torch.version.cuda if runtime == "CUDA" else torch.version.hip)


@cache
def _accelerator_properties() -> str | None:
    torch = _torch()
    if torch is None or _runtime() is None or not torch.cuda.is_available():
        return None
    return repr(torch.cuda.get_device_properties())


_FORMS: dict[str, Callable[[], Any]] = {
    "inductor_configs": _inductor_configs,
    "torch_determinism_configs": _torch_determinism_configs,
    "cuda_matmul_precision_configs": _cuda_matmul_precision_configs,
    "torch_version_hash": _torch_version_hash,
    "triton_version_hash": _triton_version_hash,
    "runtime": _runtime,
    "runtime_version": _runtime_version,
    "accelerator_properties": _accelerator_properties,
}


def _selected(choice: object, forms: tuple[str, ...]) -> tuple[str, ...]:
    if choice is True:
        return forms
    if choice is False or choice is None:
        return ()
    if isinstance(choice, dict):
        return tuple(form for form in forms if choice.get(form))
    raise TypeError(f"isolation schema entries are bool or a dict of bools, not {choice!r}")


def _schema_forms(ischema: IsolationSchema | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    schema = DEFAULT_ISOLATION_SCHEMA if ischema is None else ischema
    return (
        _selected(schema.get("runtime_context", True), RUNTIME_FORMS),
        _selected(schema.get("compile_context", True), COMPILE_FORMS),
    )


def isolation_context(ischema: IsolationSchema | None = None) -> dict[str, Any]:
    """The selected forms and their current values, ``None`` for an empty selection."""
    runtime, compile_ = _schema_forms(ischema)
    return _context(runtime, compile_, {f: _FORMS[f]() for f in runtime})


def _context(
    runtime: tuple[str, ...], compile_: tuple[str, ...], runtime_values: dict[str, Any]
) -> dict[str, Any]:
    return {
        "runtime_context": runtime_values or None,
        "compile_context": {f: _FORMS[f]() for f in compile_} or None,
    }


def _digest(context: dict[str, Any]) -> str:
    text = json.dumps(context, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def isolation_key(ischema: IsolationSchema | None = None) -> str:
    """A 32-hex-digit digest of :func:`isolation_context`; part of every entry's key.

    Recomputed only when it can change (see :func:`runtime_varies`); otherwise
    cached per selection of forms, so ``get`` and ``insert`` do not pay for it.
    """
    forms = _schema_forms(ischema)
    cached = _static_keys.get(forms)
    if cached is not None:
        return cached
    runtime, compile_ = forms
    values = {f: _FORMS[f]() for f in runtime}
    if not (runtime and _importable("torch")):
        static = _static_keys[forms] = _digest(_context(runtime, compile_, values))
        return static
    # Runtime forms can change between calls: read them (cheap), and hash the whole
    # context only for a combination not seen before.
    fingerprint = (forms, tuple(_hashable(v) for v in values.values()))
    key = _varying_keys.get(fingerprint)
    if key is None:
        key = _digest(_context(runtime, compile_, values))
        if len(_varying_keys) >= _VARYING_KEYS_MAX:
            _varying_keys.clear()
        _varying_keys[fingerprint] = key
    return key


def _hashable(value: Any) -> Any:
    """Form values are flat dicts of scalars or strings: their values in order identify them."""
    return tuple(value.values()) if type(value) is dict else value


_static_keys: dict[tuple[tuple[str, ...], tuple[str, ...]], str] = {}
_VARYING_KEYS_MAX = 1024
_varying_keys: dict[tuple[tuple[tuple[str, ...], tuple[str, ...]], tuple[Any, ...]], str] = {}


def runtime_varies(ischema: IsolationSchema | None = None) -> bool:
    """Whether the isolation key can change between calls in this process.

    Only runtime forms backed by an installed torch can; without torch every form
    is a constant ``None`` and a memo fast path may skip recomputing the key.
    """
    runtime, _ = _schema_forms(ischema)
    return bool(runtime) and _importable("torch")


class IsolationKeyer:
    """Isolation key of one schema; ``varies`` tells a memo fast path whether it may skip it."""

    def __init__(self, ischema: IsolationSchema | None) -> None:
        self._schema = ischema
        self.varies = runtime_varies(ischema)

    def __call__(self) -> str:
        return isolation_key(self._schema)
