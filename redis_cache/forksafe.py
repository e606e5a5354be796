"""What a fork must reset: every lock and thread this library owns.

A child forked while another thread of the parent held a lock inherits the lock
held, by a thread that does not exist in the child: the first use hangs forever.
Objects that own locks or threads register here and get ``after_fork_in_child()``
called in the child before any user code runs. Registration is weak.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class ForkAware(Protocol):
    def after_fork_in_child(self) -> None: ...


_registered: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def register(obj: ForkAware) -> None:
    """Call ``obj.after_fork_in_child()`` in every child forked from now on."""
    _registered.add(obj)


def _reset_all() -> None:
    for obj in list(_registered):
        obj.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_all)
