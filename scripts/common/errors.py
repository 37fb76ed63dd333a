"""One-line, actionable errors for bad input instead of tracebacks from deep inside a library.

Every check in :mod:`scripts.data.checks` raises :class:`InputError` with a message that starts with the
offending path. :func:`install_excepthook` (run by each workflow's ``initialize``) turns an uncaught
``InputError`` - also one re-raised by a DataLoader worker or wrapped by ignite - into a single
``error: ...`` line on stderr and exit code 2. Set ``BUNDLE_DEBUG=1`` to get the full traceback.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # ignite only where a workflow attaches the handler: kidney-seg --lean imports no torch
    from ignite.engine import Engine

__all__ = [
    "InputError", "OutputError", "find_in_chain", "find_input_error", "report_input_error", "install_excepthook",
    "InputErrorHandler",
]

_MARKER = "[bundle input error] "


class InputError(ValueError):
    """Bad user input: the message names the file and the problem."""

    def __init__(self, message: str) -> None:
        # The marker survives torch DataLoader workers, which re-raise with the worker traceback as text.
        super().__init__(message if message.startswith(_MARKER) else _MARKER + message)

    @property
    def message(self) -> str:
        return str(self.args[0])[len(_MARKER) :]


class OutputError(InputError):
    """Outputs could not be written (full disk, folder gone): the message names the folder and what was kept.

    A subclass of :class:`InputError`, so the same hook prints it as one line (exit code 2).
    """


def _chain(exc: BaseException | None):
    """Yield ``exc`` and its causes/contexts once each (MONAI and ignite wrap what a config expression raises)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def find_in_chain(exc: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """Return the first exception of type ``kind`` in ``exc``'s cause/context chain, else None."""
    return next((link for link in _chain(exc) if isinstance(link, kind)), None)


def find_input_error(exc: BaseException | None) -> str | None:
    """Return the one-line message of an InputError in ``exc``'s cause/context chain, else None."""
    for link in _chain(exc):
        if isinstance(link, InputError):
            return link.message
        text = str(link)
        if _MARKER in text:  # re-raised by a DataLoader worker as another exception type
            return text.split(_MARKER, 1)[1].splitlines()[0]
    return None


def report_input_error(exc: BaseException, prefix: str = "") -> int | None:
    """Print ``{prefix}error: <message>`` for an InputError in ``exc``'s chain and return exit code 2.

    Returns None (the caller re-raises) for any other exception, or when ``BUNDLE_DEBUG`` asks for tracebacks.
    """
    message = find_input_error(exc)
    if message is None or os.environ.get("BUNDLE_DEBUG"):
        return None
    print(f"{prefix}error: {message}", file=sys.stderr)
    return 2


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    message = find_input_error(exc)
    if message is None or os.environ.get("BUNDLE_DEBUG"):
        sys.__excepthook__(exc_type, exc, tb)
        return
    # the real stderr: a hook that wraps this one (torch.distributed's, once a process group exists) swaps
    # sys.stderr for a buffer it prints after we return - and os._exit below means we never return
    stderr = sys.__stderr__ or sys.stderr
    stderr.write(f"error: {message}\n")
    stderr.flush()
    os._exit(2)  # skip interpreter teardown (DataLoader workers, tensorboard threads)


def install_excepthook() -> bool:
    """Install the one-line error hook for command-line runs; returns True so configs can list it."""
    sys.excepthook = _excepthook
    return True


class InputErrorHandler:
    """Ignite handler that re-raises an exception before other EXCEPTION_RAISED handlers log it.

    Attach it first in a handler list: MONAI's ``StatsHandler`` logs every exception with its full
    traceback; for an :class:`InputError` the one-line message from :func:`install_excepthook` is enough,
    and any other exception reaches Python's default hook, which prints its traceback once.
    """

    def attach(self, engine: Engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EXCEPTION_RAISED, self)

    def __call__(self, engine: Engine, exc: Exception) -> None:
        raise exc
