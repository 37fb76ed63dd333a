"""Checks of command-line arguments that stop a run with one line before any work starts."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import InputError

__all__ = ["check_bool_flags", "check_output_dir", "run_checks"]


def check_bool_flags(**flags) -> bool:
    """Fail early when a command-line flag meant as a boolean arrived as text.

    ``python -m monai.bundle run ... --resume false`` passes the *string* "false" (python-fire reads only
    ``True``/``False`` as booleans), which a config would treat as true. Returns True for config lists.
    """
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise InputError(f"--{name}: got {value!r}; write True or False (capitalised) on the command line")
    return True


def check_output_dir(path: str | os.PathLike) -> str:
    """Create ``path`` if needed and prove it is writable; return it as a string."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test_"):
            pass
    except OSError as exc:
        raise InputError(f"{path}: output folder cannot be written ({exc.strerror or exc})") from None
    return str(path)


def run_checks(checks: Iterable[Callable[[], object]]) -> bool:
    """Call each check in order (a config's ``argument_checks``: callable components); True for config lists."""
    for check in checks:
        check()
    return True
