"""What every ``redis-cache`` command shares: exit codes, the failure guard, the
layers built from the workers' settings, progress and sizes on a terminal."""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from . import config, exceptions

if TYPE_CHECKING:
    from .layers.disk import DiskLayer
    from .layers.redis import RedisLayer

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]


class Refused(Exception):
    """An operation refused before it changed anything; carries its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def hidden() -> list[str]:
    """Secrets of the current settings, to scrub from anything a server said."""
    from .doctor import hidden_strings  # noqa: PLC0415

    try:
        return hidden_strings(config.load())
    except exceptions.CacheError:
        return []


def error(message: str) -> None:
    from .doctor import scrub  # noqa: PLC0415

    print(f"redis-cache: {scrub(message, hidden())}", file=sys.stderr)


def is_configuration_error(exc: BaseException) -> bool:
    """A setting problem, however it surfaced: an invalid variable, or a URL the client
    builder refused (``connection`` wraps that in ``RemoteUnavailableError``)."""
    if isinstance(exc, exceptions.InvalidSettingError):
        return True
    from . import connection  # noqa: PLC0415

    invalid: type[BaseException] | None = getattr(connection, "_Invalid", None)
    return invalid is not None and isinstance(exc.__cause__, invalid)


def guarded(handler: Handler) -> Handler:
    """Expected failures become one scrubbed sentence and an exit code, never a traceback."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except Refused as exc:
            error(str(exc))
            return exc.code
        except exceptions.CacheError as exc:
            if is_configuration_error(exc):
                error(f"configuration error: {exc}")
                return EXIT_USAGE
            error(str(exc))
            return EXIT_FAILED
        except BrokenPipeError:
            raise
        except OSError as exc:
            error(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
            return EXIT_FAILED

    return run


def remote_layer(action: str, *, writes: bool) -> RedisLayer:
    """The namespace's Redis layer from the workers' settings; refuses what they forbid."""
    from .layers.redis import RedisLayer  # noqa: PLC0415

    settings = config.load()
    if not settings.has_remote:
        raise Refused(f"{action} needs the remote layer; REDIS_CACHE_URL is not set", EXIT_USAGE)
    if writes and settings.read_only:
        raise Refused(
            f"{action} writes to the remote layer, and REDIS_CACHE_READ_ONLY=1", EXIT_USAGE
        )
    check_client_settings(settings)
    return RedisLayer(settings)


def check_client_settings(settings: config.Settings) -> None:
    """Build (never connect) a client once: a bad URL is a configuration error up front."""
    from .connection import build_client  # noqa: PLC0415

    build_client(settings).close()


def disk_layer(max_bytes: int | None = None) -> DiskLayer:
    """This machine's disk layer of the namespace, as workers with these settings use it."""
    from .layers.disk import DiskLayer  # noqa: PLC0415

    settings = config.load()
    bound = settings.disk_max_bytes if max_bytes is None else max_bytes
    return DiskLayer(settings.dir, settings.namespace, max_bytes=bound)


class Progress:
    """A one-line ``\\r`` progress display on a terminal (stderr); silent otherwise.

    With a ``total`` it shows ``n of total`` and a percentage.
    """

    def __init__(self, verb: str, stream: TextIO | None = None, noun: str = "entries") -> None:
        self.verb = verb
        self.noun = noun
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.total: int | None = None
        self.shown = False

    def __call__(self, count: int, size: int) -> None:
        if not self.enabled:
            return
        amount = f", {human_bytes(size)}" if size else ""
        share = f" of {self.total} ({100 * count // self.total}%)" if self.total else ""
        self.stream.write(f"\r{self.verb} {count}{share} {self.noun}{amount}   ")
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def byte_size(text: str) -> int:
    """``500M``, ``10GiB``, ``1048576``: binary multiples, for --max-bytes."""
    match = _SIZE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 500M, 10G, 1048576)")
    number, unit = int(match[1]), match[2].lower()
    return number << (10 * " kmgt".index(unit or " "))


def count(value: float) -> str:
    """Counters as plain numbers: 1234567, not 1.23457e+06; seconds with three decimals."""
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"
