"""The `scoresde` command line."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

import torch

from . import sde as sdes

__all__ = ["main", "make_sde", "SDE_NAMES"]

SDE_NAMES = {"vp": sdes.VPSDE, "cosine": sdes.CosineVPSDE, "subvp": sdes.SubVPSDE, "ve": sdes.VESDE, "edm": sdes.EDMSDE}


def make_sde(name: str) -> sdes.AffineSDE:
    if name not in SDE_NAMES:
        raise SystemExit(f"--sde {name!r} is not valid; choose one of: {', '.join(SDE_NAMES)}")
    return SDE_NAMES[name]()


def _cmd_sdes(args: argparse.Namespace) -> None:
    names = args.sde or list(SDE_NAMES)
    for name in names:
        sde = make_sde(name)
        print(f"{name}: {sde!r}  T={sde.T:g}  t_eps={sde.t_eps:g}  prior_std={sde.prior_std:g}")
        print(f"  {'t':>10} {'alpha':>10} {'sigma':>10} {'log_snr':>10} {'f':>10} {'g2':>10}")
        grid = torch.linspace(sde.t_eps, sde.T, args.rows, dtype=torch.float64)
        rows = zip(grid, sde.alpha(grid), sde.sigma(grid), sde.log_snr(grid), sde.f(grid), sde.g2(grid))
        for row in rows:
            print("  " + " ".join(f"{float(v):10.4g}" for v in row))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scoresde", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sdes", help="print alpha, sigma, log-SNR, f and g^2 of each forward SDE")
    p.add_argument("--sde", action="append", choices=list(SDE_NAMES), help="repeatable; default all")
    p.add_argument("--rows", type=int, default=6)
    p.set_defaults(func=_cmd_sdes)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
