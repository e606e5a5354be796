"""Storage layers, fastest first: memo (process), disk (machine), redis (every machine).

The contract (``base``) is imported with the package; the layers on first use, so
that ``import redis_cache`` does not pay for the disk layer's imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .base import EntryKey, Layer, Outcome, Space

if TYPE_CHECKING:
    from .disk import DiskLayer
    from .memo import MemoEntry, MemoLayer

__all__ = ["DiskLayer", "EntryKey", "Layer", "MemoEntry", "MemoLayer", "Outcome", "Space"]

_LAZY = {"DiskLayer": ".disk", "MemoEntry": ".memo", "MemoLayer": ".memo"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)
