"""The one setting read at import: which interface ``icache`` is.

Everything else is :mod:`redis_cache.config`'s, read on first use; this stays apart so
that ``import redis_cache`` does not pay for parsing settings (config builds a large
dataclass and pulls in pathlib and urllib).
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def deterministic_at_import(env: Mapping[str, str] | None = None) -> bool:
    """The one choice made at import (``icache``); a bad value leaves ``icache`` as ``fcache``."""
    env = os.environ if env is None else env
    return env.get("REDIS_CACHE_DETERMINISTIC", "0").strip() == "1"
