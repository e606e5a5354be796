"""torch.compile's remote caches on redis_cache: FX graphs, AOTAutograd, autotuning, PGO.

torch 2.13 has no plugin hook for a remote cache. Its one seam is the class attribute
``backend_override_cls`` of ``torch._inductor.remote_cache.RemoteCache``: a
zero-argument callable whose result replaces the backend when a ``RemoteCache``
subclass is built (torch's own tests use it). This module sets it on
``RemoteFxGraphCache``, ``RemoteAOTAutogradCache``, ``RemoteAutotuneCache``,
``RemoteBundledAutotuneCache`` and ``RemoteDynamoPGOCache`` and switches on the torch
settings that make torch consult them, unless the user set a setting explicitly.

Two ways in:

- ``install()``, after ``import torch``; idempotent; raises when it cannot work.
- ``REDIS_CACHE_TORCH=1`` in the environment: torch calls the ``torch.backends`` entry
  point of this distribution while ``import torch`` runs (``_redis_cache_autoload``),
  in every process that imports torch, compile workers included. That hook sets
  nothing up front: it waits for ``torch._inductor.remote_cache`` to be imported,
  checks the seam, and only then overrides the backends and turns the settings on. If
  anything is missing it warns once and leaves torch as it was.

torch unpickles what a backend returns, so this refuses to work without
``REDIS_CACHE_SECRET``: every entry is signed, and a read returns bytes only after
their HMAC verified. See docs/torch.md.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from . import config, exceptions
from .blobs import BlobStore, IntegrationWarning, entry_name, require_secret

TARGET_MODULE = "torch._inductor.remote_cache"

# Each RemoteCache subclass we serve, with the torch setting that makes torch use it.
# A setting is switched on only if it is unset (None) and its class got our backend.
CACHES: dict[str, tuple[str, str]] = {
    "RemoteFxGraphCache": ("torch._inductor.config", "fx_graph_remote_cache"),
    "RemoteAOTAutogradCache": ("torch._functorch.config", "enable_remote_autograd_cache"),
    "RemoteAutotuneCache": ("torch._inductor.config", "autotune_remote_cache"),
    "RemoteBundledAutotuneCache": ("torch._inductor.config", "bundled_autotune_remote_cache"),
    "RemoteDynamoPGOCache": ("torch._dynamo.config", "automatic_dynamic_remote_pgo"),
}

# Every machine's entries match: one callee, torch's own key as the only parameter.
ENTRIES = entry_name("redis_cache.torch", "remote_cache")

_ABSENT = object()


class TorchIntegrationError(exceptions.CacheError, RuntimeError):
    """This torch cannot be served: it lacks the ``backend_override_cls`` seam."""


class TorchBackend:
    """What torch's ``RemoteCache`` calls: ``get(key) -> bytes | None`` and ``put(key, data)``.

    The data are torch's JSON-encoded entries (an FX graph entry carries its pickle,
    base64-encoded). One instance serves every cache class of the process.
    """

    def __init__(self, store: BlobStore) -> None:
        self.store = store

    def get(self, key: str) -> bytes | None:
        return self.store.get((key,))

    def put(self, key: str, data: bytes) -> None:
        self.store.put((key,), data)


@dataclass
class _Installation:
    backend: TorchBackend
    classes: dict[str, type]
    previous_overrides: dict[str, object]
    switched_on: list[tuple[ModuleType, str]] = field(default_factory=list)


_lock = threading.RLock()
_installation: _Installation | None = None
_pending_hook: _AfterImport | None = None
_warned = False


def active() -> bool:
    """Whether torch's remote caches are served by redis_cache in this process."""
    return _installation is not None


def install(settings: config.Settings | None = None) -> None:
    """Serve torch's remote caches from redis_cache in this process; idempotent.

    Raises :class:`InvalidSettingError` (bad or missing settings, no secret, no server)
    or :class:`TorchIntegrationError` (this torch lacks the seam); torch is then unchanged.
    """
    if _installation is not None:
        return
    checked = _checked_settings(settings)
    import torch  # noqa: F401, PLC0415 - the real torch: this module's imports are absolute

    # Imported outside the lock: an armed environment hook takes it while this import runs.
    module = importlib.import_module(TARGET_MODULE)
    with _lock:
        if _installation is None:
            _apply(module, checked)


def uninstall() -> None:
    """Put back what :func:`install` changed (backends and settings it switched on)."""
    global _installation, _pending_hook
    with _lock:
        if _pending_hook is not None:
            _pending_hook.remove()
            _pending_hook = None
        installation, _installation = _installation, None
    if installation is None:
        return
    for name, cls in installation.classes.items():
        previous = installation.previous_overrides[name]
        if previous is _ABSENT:
            del cls.backend_override_cls  # type: ignore[attr-defined]
        else:
            cls.backend_override_cls = previous  # type: ignore[attr-defined]
    for module, setting in installation.switched_on:
        setattr(module, setting, None)
    installation.backend.store.close()


def activate_from_environment() -> None:
    """``REDIS_CACHE_TORCH=1`` while ``import torch`` runs: arm the hook, or warn and leave.

    Called by torch's ``torch.backends`` entry point (``_redis_cache_autoload``); it must
    not raise and must not import torch's submodules, which are not importable yet.
    """
    global _pending_hook
    with _lock:
        if _installation is not None or _pending_hook is not None:
            return
        try:
            settings = _checked_settings(None)
        except exceptions.CacheError as exc:
            _warn(f"REDIS_CACHE_TORCH is set but {exc}")
            return
        loaded = sys.modules.get(TARGET_MODULE)
        if loaded is not None:
            _apply_or_warn(loaded, settings)
            return
        _pending_hook = _AfterImport(TARGET_MODULE, lambda module: _apply_or_warn(module, settings))
        _pending_hook.arm()


# --------------------------------------------------------------------------- internals


def _checked_settings(settings: config.Settings | None) -> config.Settings:
    settings = settings if settings is not None else config.current()
    require_secret(settings, "torch")
    if not settings.enabled:
        raise exceptions.InvalidSettingError(
            "REDIS_CACHE_ENABLED", "0", "1 for torch's remote caches to be served"
        )
    if not settings.has_remote:
        raise exceptions.InvalidSettingError(
            "REDIS_CACHE_URL",
            "",
            "a redis://, rediss:// or unix:// URL (or REDIS_CACHE_SENTINELS): torch's local "
            "caches already cover one machine, the remote ones are for sharing",
        )
    return settings


def _apply_or_warn(module: ModuleType, settings: config.Settings) -> None:
    global _pending_hook
    with _lock:
        _pending_hook = None
        if _installation is not None:
            return
        try:
            _apply(module, settings)
        except Exception as exc:  # never break torch's import of its cache module
            _warn(str(exc))


def _apply(module: ModuleType, settings: config.Settings) -> None:
    """Check the seam, then override the backends and switch the caches on (all or nothing)."""
    global _installation
    classes = _served_classes(module)
    settings_of = {
        name: (sys.modules.get(m) or importlib.import_module(m), setting)
        for name, (m, setting) in CACHES.items()
        if name in classes
    }
    backend = TorchBackend(BlobStore(ENTRIES, settings, host="torch"))

    def backend_override() -> TorchBackend:
        return backend

    previous = {n: cls.__dict__.get("backend_override_cls", _ABSENT) for n, cls in classes.items()}
    installation = _Installation(backend, classes, previous)
    for cls in classes.values():
        cls.backend_override_cls = backend_override  # type: ignore[attr-defined]
    for name, (config_module, setting) in settings_of.items():
        if name == "RemoteBundledAutotuneCache" and not _bundled_autotune_usable():
            continue
        # None is torch's "not set": an explicit True or False (code or TORCHINDUCTOR_*) wins.
        if getattr(config_module, setting, None) is None:
            setattr(config_module, setting, True)
            installation.switched_on.append((config_module, setting))
    _installation = installation


def _bundled_autotune_usable() -> bool:
    """Whether torch can key a bundled autotune entry here (it needs a Triton GPU backend).

    torch 2.13 asserts that ``inductor_meta["backend_hash"]`` is a string when the bundled
    autotune cache is on, and that hash exists only where Triton has a device: switched on
    without one, every compile fails. This asks what torch asks to compute that hash.
    """
    try:
        from torch.utils._triton import has_triton, triton_hash_with_backend  # noqa: PLC0415

        return bool(has_triton()) and isinstance(triton_hash_with_backend(), str)
    except Exception:  # no driver, no device, no triton: not usable
        return False


def _served_classes(module: ModuleType) -> dict[str, type]:
    base = getattr(module, "RemoteCache", None)
    version = getattr(sys.modules.get("torch"), "__version__", "?")
    if not isinstance(base, type) or "backend_override_cls" not in vars(base):
        raise TorchIntegrationError(
            f"torch {version} has no RemoteCache.backend_override_cls in {TARGET_MODULE}; "
            "torch's remote caches are left as they were (tested with torch 2.13)"
        )
    classes = {}
    for name in CACHES:
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, base):
            classes[name] = cls
    if "RemoteFxGraphCache" not in classes:
        raise TorchIntegrationError(
            f"torch {version} has no RemoteFxGraphCache in {TARGET_MODULE}; "
            "torch's remote caches are left as they were (tested with torch 2.13)"
        )
    return classes


def _warn(message: str) -> None:
    """The one warning of this process about activation; torch keeps running unchanged."""
    global _warned
    if _warned:
        return
    _warned = True
    warnings.warn(
        f"redis_cache: {message}; torch's remote caches are unchanged",
        IntegrationWarning,
        stacklevel=3,
    )


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``callback(module)`` right after ``name`` is first executed, then leaves.

    Python has no post-import hook; this finder lends the real loader to the import of
    ``name`` and calls back once it has run. The module keeps its real loader, so
    ``inspect``, ``pkgutil`` and reloads see nothing of this.
    """

    def __init__(self, name: str, callback: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.callback = callback

    def arm(self) -> None:
        sys.meta_path.insert(0, self)

    def remove(self) -> None:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)

    def find_spec(
        self, fullname: str, path: Any, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec: importlib.machinery.ModuleSpec | None = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _CallbackLoader(spec.loader, self)
        return spec


class _CallbackLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, hook: _AfterImport) -> None:
        self.loader = loader
        self.hook = hook

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        created: ModuleType | None = self.loader.create_module(spec)
        return created

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        self.hook.remove()
        self.hook.callback(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)
