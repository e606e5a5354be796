"""Callbacks on cache events, for users with their own metrics or tracing.

::

    from redis_cache import hooks

    def on_event(event: hooks.Event) -> None:
        metrics.increment(f"cache.{event.kind}", tags={"callee": event.callee})

    remove = hooks.add(on_event)

Events: ``hit`` (with the ``layer`` that served it: memo, disk or redis), ``miss``,
``compute`` (with the ``seconds`` the function took) and ``error`` (a failure the
cache absorbed or raised: an unreachable server, a bad entry; with the exception).
Hooks run on the caller's thread, in the order added; one that raises is logged
once and never breaks a call. With no hook added, a memo hit pays for one check.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal, NamedTuple

logger = logging.getLogger("redis_cache")

Kind = Literal["hit", "miss", "compute", "error"]


class Event(NamedTuple):
    """What happened, to which function, where. A named tuple: immutable, built in C,
    and ``import redis_cache`` does not pay for :mod:`dataclasses` (and ``inspect``)."""

    kind: Kind
    interface: str  # "fcache" or "dcache"
    callee: str
    layer: str | None = None  # for hits: "memo", "disk" or "redis"
    seconds: float | None = None  # for computations
    error: BaseException | None = None  # for errors


Hook = Callable[[Event], None]

# The list object never changes (record wrappers hold it); hooks are added in place.
active: list[Hook] = []
_failed: set[int] = set()


def add(hook: Hook) -> Callable[[], None]:
    """Call ``hook`` on every event from now on; returns a function that removes it."""
    active.append(hook)

    def remove() -> None:
        if hook in active:
            active.remove(hook)

    return remove


def emit(event: Event) -> None:
    """Run every hook on ``event``; a hook that raises is logged (once) and skipped."""
    for hook in list(active):
        try:
            hook(event)
        except Exception:
            if id(hook) not in _failed:
                _failed.add(id(hook))
                logger.exception("redis_cache hook %r raised; it keeps being called", hook)
