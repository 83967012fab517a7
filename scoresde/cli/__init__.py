"""The `scoresde` command line (also `python -m scoresde`): `scoresde train`, `scoresde sample`,
`scoresde nll`, `scoresde bench`, `scoresde tune`, `scoresde schedule optimize`, `scoresde sdes`; one module per
subcommand, each with `add(command)` (its flags) and `run(args)` (its work).

Flags mean one thing in every subcommand: `--samples` (alias `--n`, except under `bench`,
where torchrun's own `--nnodes`/`--nproc-per-node` make that prefix ambiguous) is the sample
count, `--ckpt` a Trainer checkpoint, `--data` a data set (a built-in name or a file),
`--steps` solver (or training) steps, `--nfe` NFE budgets, and `--dtype` defaults to float32
everywhere.

Bad input (a flag's value, a missing or malformed input file, an --out that cannot be
written, a device this machine lacks) is refused before any work, in one line
`scoresde: error: <flag> must be <accepted>; got <given>` with exit status 2; `--debug`
(before or after the subcommand) shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from . import bench, nll, sample, schedule, sdes, train, tune, unclip
from ._args import Formatter, Parser, UsageError, check_ints

__all__ = ["main", "build_parser"]

#: the subcommands, in the order --help lists them
COMMANDS = (train, sample, sdes, nll, bench, tune, schedule, unclip)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="scoresde", description=__doc__, formatter_class=Formatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not one line")
    debug = Parser(add_help=False)  # --debug after the subcommand too (SUPPRESS: it never resets the first)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of an error, not one line")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, parent=sub) -> argparse.ArgumentParser:
        return parent.add_parser(name, help=help, description=help, formatter_class=Formatter, parents=[debug])

    for module in COMMANDS:
        module.add(command)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; 0 on success, 2 for bad input (one line `scoresde: error: ...`;
    `--debug` shows the traceback instead), 1 for a run that failed (NaN or inf mid-run)."""
    from ..solvers import NonFiniteError

    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        print(f"scoresde: error: {err}", file=sys.stderr)
        return 2
    try:
        check_ints(args)
        args.func(args)
    except BrokenPipeError:  # `scoresde sdes | head`: the reader left; say nothing (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, OSError, NonFiniteError) as err:  # OSError: a file that went away or filled the disk
        if args.debug:
            raise
        print(f"scoresde: error: {err}", file=sys.stderr)
        return 1 if isinstance(err, NonFiniteError) else 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("scoresde: interrupted", file=sys.stderr)
        return 130
    return 0
