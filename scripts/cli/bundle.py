"""``python -m scripts.cli.bundle run <id> --config_file ... [--key value ...]``: ``python -m monai.bundle`` with the
arguments checked first, so that a misspelt run id, a missing config file or an unknown network overlay ends in
one line instead of MONAI's traceback (issue 14); an :class:`~scripts.common.errors.InputError` from the run ends
in one line too. Everything else is ``python -m monai.bundle``'s own command line (python-fire), which keeps working
unchanged; MONAI raises its errors before any code of this bundle runs, so only this front can catch them.

Exit codes: those of the workflow; 2 for the errors above. ``BUNDLE_DEBUG=1`` shows MONAI's traceback instead.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Sequence

from ..common.errors import InputError, report_input_error
from .validate import check_config_files, check_run_id

__all__ = ["check_bundle_args", "main"]


def _option(argv: Sequence[str], name: str) -> str | None:
    """The value of ``--name value`` or ``--name=value`` (python-fire's forms), else None."""
    for index, arg in enumerate(argv):
        if arg == f"--{name}" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def _config_files(value: str) -> list[str]:
    """``configs/a.json`` or ``"['configs/a.json','configs/b.json']"`` (python-fire's list) as a list."""
    text = value.strip()
    if text.startswith(("[", "(")):
        try:
            return [str(v) for v in ast.literal_eval(text)]
        except (ValueError, SyntaxError):
            raise InputError(f"--config_file {value}: not a list of file names; quote it as "
                             "\"['configs/inference.json','configs/networks/sd_unet.json']\"") from None
    return [text]


def check_bundle_args(argv: Sequence[str]) -> None:
    """Check the config files and the run id of a ``run`` command line (``argv`` without the program name)."""
    if not argv or argv[0] not in ("run", "run_workflow"):
        return
    config = _option(argv, "config_file")
    if config is None:
        return
    files = check_config_files(_config_files(config))
    run_id = _option(argv, "run_id")
    if run_id is None and len(argv) > 1 and not argv[1].startswith("-"):
        run_id = argv[1]
    check_run_id(run_id or "run", files)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        check_bundle_args(argv)
        import fire
        import monai.bundle.__main__ as bundle_main

        commands = {name: value for name, value in vars(bundle_main).items() if callable(value)
                    and not name.startswith("_") and getattr(value, "__module__", "").startswith("monai.bundle")}
        fire.Fire(commands, command=argv, name="python -m scripts.cli.bundle")
    except Exception as exc:
        code = report_input_error(exc)
        if code is None:
            raise
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
