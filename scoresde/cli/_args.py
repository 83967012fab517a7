"""What every `scoresde` subcommand shares: the parser that prints usage errors as one line,
checked integer flags, input and output paths refused before any work, `--options` and
`--schedule-file`, and the one PNG drawer of samples."""
from __future__ import annotations

import argparse
import inspect
import json
import os
import tempfile
from pathlib import Path
from typing import Optional

import torch

from .. import _checks

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# the most a flag may ask for: beyond these a run exhausts memory or runs for hours on a typo
MAX_SAMPLES, WHY_SAMPLES = 10_000_000, "a batch in memory"
MAX_STEPS, WHY_STEPS = 100_000, "a grid this fine only adds round-off"
WEIGHTS = ["ema", "raw", "model"]


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where it is None or False (the help says what then)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


class SolverNames(list):
    """The canonical solver names (what --help lists), of which `in` also accepts old aliases."""

    def __contains__(self, name) -> bool:
        from ..solvers import get

        try:
            return get(name).name in list(self)
        except ValueError:
            return False


class UsageError(ValueError):
    """argparse's own refusal (unknown flag, invalid choice), printed by main() as one line."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser (and, through add_subparsers, every subparser) whose usage errors are
    raised, so that main() prints them as the one line every other bad input gets."""

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _number(text: str):
    """An integer flag's value as parsed: an int, or the text itself, which `_checks.integer`
    then refuses in its own words (`steps must be an integer >= 1; got 'inf'`)."""
    try:
        return int(text)
    except ValueError:
        return text


def int_flag(parser: argparse.ArgumentParser, *flags: str, low: Optional[int] = 1, high: Optional[int] = None,
         why: str = "", **kwargs) -> None:
    """An integer flag, checked by `_checks.integer` (>= low) once parsed, as the library checks
    its arguments: one line naming it (`rows must be an integer >= 1; got 0`), no traceback.
    `high` refuses what would exhaust memory or time on a typo; `why` says so in the message."""
    action = parser.add_argument(*flags, type=_number, **kwargs)
    parser.set_defaults(_ints=(*(parser.get_default("_ints") or ()), (action.dest, low, high, why)))


def check_ints(args: argparse.Namespace) -> None:
    for dest, low, high, why in getattr(args, "_ints", ()):
        value = getattr(args, dest)
        for v in value if isinstance(value, list) else [value]:
            if v is not None:
                v = _checks.integer(dest, v, low=low)
                if high is not None and v > high:
                    raise _checks.fail(dest, f"an integer <= {high}{f' ({why})' if why else ''}", v)


def seed_flag(parser: argparse.ArgumentParser) -> None:
    # torch maps a negative seed silently onto 2**64 + seed, and the commands draw from seed + 1..3
    int_flag(parser, "--seed", low=0, high=2**32 - 1, why="32 bits", default=0,
         help="seed of the prior noise and of every other draw")


def refuse(flag: str, accepted: str, given: str, why: str) -> _checks.ArgumentError:
    """`_checks.fail`'s message with the reason added, and `given` (a path) never shortened."""
    return _checks.ArgumentError(f"{flag} must be {accepted}; got {given!r} ({why})")


def device_flag(text: str) -> str:
    """--device, refused here if torch does not know it or this machine lacks it (torch itself
    would fail at the first tensor, with a message about its build)."""
    accepted = "cpu, cuda or cuda:<index>"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise _checks.fail("--device", accepted, text) from None
    if device.type == "cpu":
        return text
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise refuse("--device", "cpu", text, "this machine has no CUDA device, or torch was built without CUDA")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise refuse("--device", f"cpu, cuda or cuda:<index> with index < {count}", text,
                          f"this machine has {count} CUDA device{'s' if count > 1 else ''}")
        return text
    if device.type == "mps" and torch.backends.mps.is_available():
        return text
    raise _checks.fail("--device", accepted, text)


def input_file(flag: str, path: str, what: str) -> Path:
    """An input file, refused before any work if it is missing, a directory or unreadable."""
    file = Path(path)
    accepted = f"a readable {what}"
    if file.is_dir():
        raise refuse(flag, accepted, path, "it is a directory")
    if not file.exists():
        raise refuse(flag, accepted, path, "it does not exist")
    if not os.access(file, os.R_OK):
        raise refuse(flag, accepted, path, "it cannot be read")
    return file


def _writable(folder: Path) -> Optional[str]:
    """Why files cannot be created in the existing `folder`, or None if they can (tried, since
    permission bits do not tell for root or a read-only file system)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as err:
        return f"cannot write in {folder}: {err.strerror or err}"


def output_folder(path: str, flag: str = "--out") -> Path:
    """--out (or another `flag`) as a folder (created when the results are written): refused
    before any work if it is a file, lies under a file, or cannot be created or written."""
    folder = Path(path)
    accepted = "a folder that exists or can be created, and can be written"
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise refuse(flag, accepted, path, "it is a file" if existing == folder else f"{existing} is a file")
    why = _writable(existing)
    if why:
        raise refuse(flag, accepted, path, why)
    return folder


def output_file(path: str) -> Path:
    """--out as a file (replaced if it exists): refused before any work if it is a folder, or
    its folder is missing or cannot be written."""
    file = Path(path)
    accepted = "a file path in an existing, writable folder"
    if file.is_dir():
        raise refuse("--out", accepted, path, "it is a folder")
    if not file.parent.is_dir():
        raise refuse("--out", accepted, path, f"{file.parent} is not a folder"
                      if file.parent.exists() else f"folder {file.parent} does not exist")
    why = _writable(file.parent) or (None if not file.exists() or os.access(file, os.W_OK) else "it is read-only")
    if why:
        raise refuse("--out", accepted, path, why)
    return file


def solver_options(text: Optional[str]) -> dict:
    """`--options` JSON: an object of solver options, none of them an argument of `sample()`
    itself (those have their own flags, or none on purpose)."""
    from ..solvers import sample

    options = json_object("--options", text, "solver options")
    params = inspect.signature(sample).parameters
    own = [k for k in options if k in params and params[k].kind is not inspect.Parameter.VAR_KEYWORD]
    if own:
        raise _checks.fail("--options", f"solver options, not arguments of sample() itself ({', '.join(own)})", text)
    return options


def schedule_file(path: str):
    """--schedule-file's OptimizedSchedule; its times are checked by sample() before it starts."""
    from ..tuning import OptimizedSchedule

    return _saved_file("--schedule-file", path, OptimizedSchedule, "scoresde schedule optimize")


def tuned_file(path: str):
    """--tuned's TunedSampler (a file of `scoresde tune`, or of `scoresde schedule optimize`)."""
    from ..tuning import TunedSampler

    return _saved_file("--tuned", path, TunedSampler, "scoresde tune")


def _saved_file(flag: str, path: str, cls, command: str):
    """`cls.load(path)` for `flag`, refused before any work if the file is missing or is not one
    that `command` writes."""
    accepted = f"a JSON file written by `{command}`"
    input_file(flag, path, accepted[2:])
    try:
        return cls.load(path)
    except (ValueError, TypeError, KeyError) as err:  # not JSON, not an object, or fields of the wrong types
        raise refuse(flag, accepted, path, f"{type(err).__name__}: {err}") from None


def json_object(flag: str, text: Optional[str], what: str) -> dict:
    """A flag's JSON object (`what` says of what), {} when not given."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise _checks.fail(flag, f"a JSON object of {what}", text) from None
    if not isinstance(value, dict):
        raise _checks.fail(flag, f"a JSON object of {what}", text)
    return value
