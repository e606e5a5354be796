"""Storage layers, fastest first: memo (process), disk (machine), redis (every machine)."""

from .base import EntryKey, Layer, Outcome, Space
from .disk import DiskLayer
from .memo import MemoEntry, MemoLayer

__all__ = ["DiskLayer", "EntryKey", "Layer", "MemoEntry", "MemoLayer", "Outcome", "Space"]
