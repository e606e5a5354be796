"""Isolation context: what besides the arguments decides whether a cached result is valid.

The forms keep the names of PyTorch Inductor's caching module so isolation schemas
written for it work here. Forms that need torch or triton are computed when those
are importable and are ``None`` otherwise, so a torch-free farm shares keys with
itself and never with a torch build whose results could differ.
"""

from __future__ import annotations

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
        import importlib.util  # noqa: PLC0415 - cheap `import redis_cache`

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


# Runtime forms: a program may flip these between calls, so every memo hit must see
# them. A fingerprint reads them all in one expression of eight direct calls (C
# functions where torch has them, ~0.1 µs in all with torch 2.13); their JSON values
# are built from a fingerprint only when it is new (rebuilding them took ~5 µs, and
# each cuBLAS flag read through torch.backends 1.4-1.9 µs). Slots of unselected or
# absent forms call ``_none``.

_none = type(None)  # a C callable returning None: the filler of an unused slot
Slots = tuple[Callable[[], Any], ...]


def _inductor_slots(torch: Any) -> tuple[Slots, Callable[[], object] | None]:
    """(dirty?, digest) getters and the refresh to call when dirty: Inductor's digest of
    its settings, the one its compile caches key on, cached until a setting changes."""
    from torch._inductor import config  # noqa: PLC0415

    get_hash = getattr(config, "get_hash", None)
    if get_hash is None:  # very old torch: the whole portable dump stands for the digest
        dump = config.save_config_portable
        return (_false, lambda: repr(dump(ignore_private_configs=False))), None
    dirty = getattr(config, "_hash_dirty_var", None)
    cached = getattr(config, "_hash_cache_var", None)
    if dirty is None or cached is None:
        return (_false, get_hash), None
    return (dirty.get, cached.get), get_hash


def _false() -> bool:
    return False


def _determinism_slots(torch: Any) -> Slots:
    c = getattr(torch, "_C", None)
    return (
        getattr(c, "_get_deterministic_algorithms", None)
        or torch.are_deterministic_algorithms_enabled,
        getattr(c, "_get_deterministic_algorithms_warn_only", None)
        or torch.is_deterministic_algorithms_warn_only_enabled,
        getattr(c, "_get_deterministic_fill_uninitialized_memory", None)
        or (lambda: torch.utils.deterministic.fill_uninitialized_memory),
    )


def _matmul_slots(torch: Any) -> Slots:
    if not (torch.version.cuda or getattr(torch.version, "hip", None)):
        # A build without CUDA or ROCm never runs cuBLAS: the flags cannot change results.
        return (_none, _none, _none)
    matmul = torch.backends.cuda.matmul

    def reader(attribute: str) -> Callable[[], Any]:
        return lambda: getattr(matmul, attribute, None)

    return tuple(reader(name.rpartition(".")[2]) for name in _MATMUL_NAMES)


_DETERMINISM_NAMES = (
    "torch.are_deterministic_algorithms_enabled",
    "torch.is_deterministic_algorithms_warn_only_enabled",
    "torch.utils.deterministic.fill_uninitialized_memory",
)
_MATMUL_NAMES = (
    "torch.backends.cuda.matmul.fp32_precision",
    "torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction",
    "torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction",
)


def _form_values(runtime: tuple[str, ...], raw: tuple[Any, ...]) -> dict[str, Any]:
    """The selected runtime forms' JSON values from a fingerprint (slots 0-1, 2-4, 5-7)."""
    digest = raw[1]
    values = {
        "inductor_configs": digest.hex() if type(digest) is bytes else digest,
        "torch_determinism_configs": dict(zip(_DETERMINISM_NAMES, raw[2:5], strict=True)),
        "cuda_matmul_precision_configs": (
            None if raw[5:8] == (None, None, None)
            else dict(zip(_MATMUL_NAMES, raw[5:8], strict=True))
        ),
    }  # fmt: skip
    return {form: values[form] for form in runtime}


def _runtime_values(forms: tuple[str, ...]) -> dict[str, Any]:
    """The current JSON value of each runtime form (``None`` each without torch)."""
    schema: Any = {"runtime_context": dict.fromkeys(forms, True), "compile_context": False}
    keyer = IsolationKeyer(schema)
    if not keyer.varies:
        return dict.fromkeys(forms)
    return keyer.values(keyer.fingerprint())


# Compile forms: process-static, computed once.


@cache
def _torch_version_hash() -> str | None:
    """The torch build: its version (with the local tag, +cpu or +cu121) and commit.

    Inductor's ``torch_key()`` also hashes torch's sources, which catches local edits
    to an installed torch, but it costs every fresh worker ~1.5 s (importing
    ``torch._inductor.codecache`` and reading the sources) before its first hit.
    Wheels of one version and commit are identical; a fleet that edits torch in
    place uses a namespace per image.
    """
    torch = _torch()
    if torch is None:
        return None
    build = f"{torch.__version__}\0{getattr(torch.version, 'git_version', '')}"
    return _sha256(build.encode())


@cache
def _triton_version_hash() -> str | None:
    """The installed Triton's version, from its metadata: importing it costs seconds."""
    if not _importable("triton"):
        return None
    import importlib.metadata  # noqa: PLC0415 - 20 ms to import: only with triton

    try:
        version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:  # a source checkout on sys.path
        import triton  # noqa: PLC0415

        version = str(triton.__version__)
    return _sha256(version.encode())


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


_COMPILE_FORMS: dict[str, Callable[[], Any]] = {
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
    return _context(_runtime_values(runtime), compile_)


def _context(runtime_values: dict[str, Any], compile_: tuple[str, ...]) -> dict[str, Any]:
    return {
        "runtime_context": runtime_values or None,
        "compile_context": {f: _COMPILE_FORMS[f]() for f in compile_} or None,
    }


def _digest(context: dict[str, Any]) -> str:
    import json  # noqa: PLC0415 - cheap `import redis_cache`

    text = json.dumps(context, sort_keys=True, default=repr)
    return _sha256(text.encode())[:32]


def _sha256(data: bytes) -> str:
    import hashlib  # noqa: PLC0415 - cheap `import redis_cache`

    return hashlib.sha256(data).hexdigest()


def isolation_key(ischema: IsolationSchema | None = None) -> str:
    """A 32-hex-digit digest of :func:`isolation_context`; part of every entry's key."""
    forms = _schema_forms(ischema)
    keyer = _keyers.get(forms)
    if keyer is None:
        keyer = _keyers[forms] = IsolationKeyer(ischema)
    return keyer()


def runtime_varies(ischema: IsolationSchema | None = None) -> bool:
    """Whether the isolation key can change between calls in this process.

    Only runtime forms backed by an installed torch can; without torch every form
    is a constant ``None`` and a memo fast path may skip recomputing the key.
    """
    runtime, _ = _schema_forms(ischema)
    return bool(runtime) and _importable("torch")


class IsolationKeyer:
    """The isolation key of one schema, and the cheap fingerprint it follows.

    ``varies`` says whether the key can change between calls (runtime forms and torch
    installed). ``fingerprint()`` reads the raw runtime values: a memo fast path keys
    on it, so it stays correct when a setting flips, without building the key.
    ``key(fingerprint)`` digests each new fingerprint once.
    """

    def __init__(self, ischema: IsolationSchema | None) -> None:
        self._runtime, self._compile = _schema_forms(ischema)
        self.varies = bool(self._runtime) and _importable("torch")
        self._read: Callable[[], tuple[Any, ...]] | None = None
        self._refresh: Callable[[], object] | None = None
        self._positions: tuple[int, ...] = ()
        self._static: str | None = None
        self._keys: dict[Any, str] = {}

    def _prepare(self) -> Callable[[], tuple[Any, ...]]:
        torch = _torch()
        selected = set(self._runtime)
        inductor: Slots = (_false, _none)
        if "inductor_configs" in selected:
            inductor, self._refresh = _inductor_slots(torch)
        unused: Slots = (_none, _none, _none)
        determinism = unused
        if "torch_determinism_configs" in selected:
            determinism = _determinism_slots(torch)
        matmul = _matmul_slots(torch) if "cuda_matmul_precision_configs" in selected else unused
        slots = (*inductor, *determinism, *matmul)
        # Only slots that can change are read (a CPU build has no cuBLAS flags to read).
        self._positions = tuple(i for i, g in enumerate(slots) if g not in (_none, _false))
        self._read = _caller(tuple(slots[i] for i in self._positions))
        return self._read

    def fingerprint(self) -> Any:
        """What the runtime forms are now, as raw values (``None`` when nothing varies)."""
        if not self.varies:
            return None
        read = self._read or self._prepare()
        raw = read()
        if self._refresh is not None and raw[0]:  # Inductor settings changed: re-digest
            self._refresh()
            raw = read()
        return raw

    def values(self, raw: tuple[Any, ...]) -> dict[str, Any]:
        """The selected runtime forms' JSON values from a fingerprint."""
        slots: list[Any] = [False, None] + [None] * 6
        for position, value in zip(self._positions, raw, strict=True):
            slots[position] = value
        return _form_values(self._runtime, tuple(slots))

    def __call__(self) -> str:
        return self.key(self.fingerprint())

    def key(self, raw: Any) -> str:
        """The key of the runtime values ``raw`` (a :meth:`fingerprint`)."""
        if not self.varies:
            if self._static is None:
                self._static = _digest(_context(dict.fromkeys(self._runtime), self._compile))
            return self._static
        key = self._keys.get(raw)
        if key is None:
            key = _digest(_context(self.values(raw), self._compile))
            if len(self._keys) >= _FINGERPRINTS_MAX:
                self._keys.clear()
            self._keys[raw] = key
        return key


def _caller(getters: Slots) -> Callable[[], tuple[Any, ...]]:
    """One function calling every getter: a tuple of direct calls is ~3x a map over them."""
    match getters:
        case (a, b, c, d, e):  # a CPU build: Inductor's digest, three determinism flags
            return lambda: (a(), b(), c(), d(), e())
        case (a, b, c, d, e, f, g, h):  # with CUDA or ROCm: the cuBLAS flags too
            return lambda: (a(), b(), c(), d(), e(), f(), g(), h())
        case (a, b):
            return lambda: (a(), b())
        case (a, b, c):
            return lambda: (a(), b(), c())
    return lambda: tuple([get() for get in getters])


_FINGERPRINTS_MAX = 1024
_keyers: dict[tuple[tuple[str, ...], tuple[str, ...]], IsolationKeyer] = {}
