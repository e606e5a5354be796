"""redis_cache's ``torch.backends`` entry point: free unless ``REDIS_CACHE_TORCH`` is set.

torch calls every entry point of the ``torch.backends`` group while ``import torch``
runs (``torch._import_device_backends``, unless ``TORCH_DEVICE_BACKEND_AUTOLOAD=0``),
and turns an exception from one into a ``RuntimeError`` that fails ``import torch``.
So this module lives outside the ``redis_cache`` package (importing that costs tens of
milliseconds), imports nothing while the variable is unset or ``0``, and never raises.
"""

from __future__ import annotations

import os


def autoload() -> None:
    """Arm redis_cache's torch integration when ``REDIS_CACHE_TORCH`` asks for it."""
    if os.environ.get("REDIS_CACHE_TORCH", "0").strip() in ("", "0"):
        return
    try:
        from redis_cache.torch import activate_from_environment  # noqa: PLC0415

        activate_from_environment()
    except Exception as exc:  # a broken install must not break import torch
        import warnings  # noqa: PLC0415

        warnings.warn(
            f"redis_cache: REDIS_CACHE_TORCH is set but the integration did not load "
            f"({type(exc).__name__}: {exc}); torch's remote caches are unchanged",
            RuntimeWarning,
            stacklevel=2,
        )
