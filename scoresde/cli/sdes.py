"""`scoresde sdes`."""
from __future__ import annotations

import argparse

import torch

from ..sde import SDES, by_name
from ._args import int_flag


def add(command) -> None:
    p = command("sdes", "print alpha, sigma, log-SNR, f and g^2 of each forward SDE")
    p.add_argument("--sde", action="append", choices=list(SDES), help="repeatable; default all")
    int_flag(p, "--rows", high=10_000, why="a printed table", default=6, help="times per SDE, from t_eps to T")
    p.set_defaults(func=run)



def run(args: argparse.Namespace) -> None:
    for name in args.sde or list(SDES):
        sde = by_name(name)
        print(f"{name}: {sde!r}  T={sde.T:g}  t_eps={sde.t_eps:g}  prior_std={sde.prior_std:g}")
        print(f"  {'t':>10} {'alpha':>10} {'sigma':>10} {'log_snr':>10} {'f':>10} {'g2':>10}")
        grid = torch.linspace(sde.t_eps, sde.T, args.rows, dtype=torch.float64)
        rows = zip(grid, sde.alpha(grid), sde.sigma(grid), sde.log_snr(grid), sde.f(grid), sde.g2(grid))
        for row in rows:
            print("  " + " ".join(f"{float(v):10.4g}" for v in row))
