"""`scoresde nll`."""
from __future__ import annotations

import argparse

import torch

from .. import _checks
from ..sde import SDES, by_name
from ._args import DTYPES, MAX_SAMPLES, WHY_SAMPLES, int_flag, seed_flag, device_flag, input_file


def add(command) -> None:
    from ..data import BUILTIN_DATA
    from ..data.problems import PROBLEMS

    p = command("nll", "negative log-likelihood through the probability-flow ODE: of any trained model (--ckpt) "
                       "on a data set (bits/dim on the digits, nats/dim of continuous data), or exact vs ODE on an "
                       "analytic problem")
    p.add_argument("--ckpt", default=None, help="a Trainer checkpoint of any score model: its nll on --data")
    p.add_argument("--data", default=None,
                   help=f"data set of the --ckpt model: a built-in name ({' '.join(BUILTIN_DATA)}) or a "
                        ".pt/.npy/.npz file; default digits for a model of "
                        "shape (1, 8, 8), else required. Digits: bits/dim, dequantized over their 17 grey levels; "
                        "others: nats/dim of log p_{t_end}(x)")
    p.add_argument("--split", default="test", choices=["train", "test", "all"], help="split of --data")
    p.add_argument("--weights", default="ema", choices=["ema", "raw", "model"],
                   help="ema: the moving average of the weights; raw: the optimized weights (model: old name of raw)")
    int_flag(p, "--draws", high=10_000, default=1, help="dequantization draws per image (digits)")
    p.add_argument("--problem", default="ring2d", choices=list(PROBLEMS), help="analytic problem (without --ckpt)")
    p.add_argument("--sde", default="vp", choices=list(SDES), help="forward SDE (without --ckpt)")
    int_flag(p, "--samples", "--n", dest="samples", high=MAX_SAMPLES, why=WHY_SAMPLES, default=200,
             help="exact samples of --problem, or the first samples of --split with --ckpt")
    p.add_argument("--trace", default="exact", choices=["exact", "hutchinson"], help="divergence of the ODE drift")
    int_flag(p, "--probes", high=10_000, default=1, help="Hutchinson probes")
    p.add_argument("--method", default="dopri5", help="torchdiffeq method")
    p.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance of the ODE solve")
    p.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance of the ODE solve")
    seed_flag(p)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="dtype of the model, data and ODE solve")
    p.set_defaults(func=run)



def run(args: argparse.Namespace) -> None:
    """Negative log-likelihood through the probability-flow ODE: of a trained model (--ckpt) on
    a data set, or exact vs ODE nll on an analytic problem (--problem)."""
    import math

    from ..likelihood import log_likelihood

    device_flag(args.device)
    dtype = DTYPES[args.dtype]
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    options = dict(trace=args.trace, probes=args.probes, method=args.method, rtol=args.rtol, atol=args.atol)
    if args.ckpt is not None:
        return _checkpoint_nll(args, dtype, gen, options)
    if args.data is not None:
        raise _checks.fail("--data", "used with --ckpt (the data set of the checkpoint's model)", args.data)
    from ..data.problems import get_problem

    n = args.samples
    sde = by_name(args.sde)
    truth = get_problem(args.problem)
    model = truth.score_model(sde)
    x = truth.sample(n, gen, dtype=dtype, device=args.device)
    res = log_likelihood(model, x, generator=gen, **options)
    exact = truth.log_prob_t(x, sde.t_eps, sde)
    diff = (res.logp - exact).double()
    half = 1.96 * float(diff.std()) / math.sqrt(n) if n > 1 else 0.0
    print(f"{args.problem} | {args.sde} | n={n} trace={args.trace} rtol={args.rtol:g} atol={args.atol:g}: "
          f"nll exact {float(-exact.mean()):.5f}, ODE {float(-res.logp.mean()):.5f} nats "
          f"(difference {float(-diff.mean()):+.2e} +- {half:.1e}, max |diff| {float(diff.abs().max()):.2e}; "
          f"of log p_{{t_end}} with t_end={res.t_end:g}), {res.nfe} NFE")


def _checkpoint_nll(args: argparse.Namespace, dtype: torch.dtype, gen: torch.Generator, options: dict) -> None:
    """`nll --ckpt`: bits/dim of the digits (dequantized: grey levels 0..16 scaled by k/8 - 1,
    so 17 levels, bins of width 1/8), or nats/dim of -log p_{t_end}(x) of continuous data, each
    with a 95% interval over the samples."""
    import math

    from ..bench import checkpoint_data, score_checkpoint
    from ..likelihood import bits_per_dim, log_likelihood
    from ..training import load_model

    path = input_file("--ckpt", args.ckpt, "Trainer checkpoint file")
    state = score_checkpoint(path, "--ckpt")
    data = checkpoint_data(state, args.data, args.split, name="--data", dtype=dtype, device=args.device)
    if data.name != "digits" and args.draws != 1:
        raise _checks.fail("--draws", "1 for continuous data (dequantization draws are for the discrete digits)",
                           args.draws)
    model = load_model(path, args.weights, device=args.device, dtype=dtype)
    x = data.x[: args.samples]
    n = x.shape[0]
    where = f"{data.name} ({args.split}, n={n}) | {path} ({args.weights} weights, step {int(state['step'])}) | " \
            f"trace={args.trace} rtol={args.rtol:g} atol={args.atol:g}"
    if data.name == "digits":
        out = bits_per_dim(model, x, levels=17, draws=args.draws, generator=gen, dtype=dtype, **options)
        print(f"{where} draws={args.draws}: {out.mean:.4f} +- {out.half_width:.4f} bits/dim (95% CI), {out.nfe} NFE")
        return
    res = log_likelihood(model, x, generator=gen, **options)
    nats = -res.logp.double() / math.prod(data.shape)
    half = 1.96 * float(nats.std()) / math.sqrt(n) if n > 1 else float("nan")
    print(f"{where}: {float(nats.mean()):.4f} +- {half:.4f} nats/dim (95% CI) of -log p_{{t_end}}(x), "
          f"t_end={res.t_end:g}, {res.nfe} NFE")
