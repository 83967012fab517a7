"""Log-likelihood error vs NFE of the probability-flow ODE on analytic mixtures (tolerance sweep).

    python benchmarks/likelihood.py [--problems ring2d gmm16d] [--sdes vp edm] [--samples 200]
                                    [--ckpt PATH --digits-n 297] [--out benchmarks/results]

For each problem, SDE and rtol = atol in 1e-2 .. 1e-7 (dopri5, float64, exact trace, plus the
1-probe Hutchinson estimate at the tightest tolerance), `log_likelihood` is compared with the
closed form log p_{t_eps}(x) on exact samples x. Two errors are reported, in nats per dimension,
averaged over samples:

* ode_error: |delta_logp + log p_T(z) - log p_{t_eps}(x)|, the solver's error alone (the exact
  density at T replaces the prior);
* error: |logp - log p_{t_eps}(x)|, what a user gets, which also holds the prior mismatch
  log N(z; 0, prior_std^2) - log p_T(z) and so stops falling at its floor.

Writes likelihood.json and likelihood.png (error vs counted NFE). With --ckpt (a Trainer
checkpoint of a digits model) it also reports test bits/dim with a 95% interval over images
(17 grey levels, 1 dequantization draw, float64, rtol = atol = 1e-5; --digits-trace); without
one that part is skipped and the JSON says so.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

import scoresde as sd
from scoresde.data.problems import get_problem

TOLERANCES = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7]


def measure(mix, sde, x, tol: float, trace: str = "exact", seed: int = 0) -> dict:
    model = mix.score_model(sde)
    start = time.perf_counter()
    res = sd.log_likelihood(model, x, trace=trace, rtol=tol, atol=tol, generator=torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - start
    exact = mix.log_prob_t(x, sde.t_eps, sde)
    ode_only = res.delta_logp + mix.log_prob_t(res.z, sde.T, sde)
    return {
        "tol": tol, "trace": trace, "nfe": res.nfe, "seconds": round(seconds, 3),
        "ode_error": float((ode_only - exact).abs().mean()) / mix.dim,
        "error": float((res.logp - exact).abs().mean()) / mix.dim,
        "bias": float((res.logp - exact).mean()) / mix.dim,
        "nll": float(-res.logp.mean()), "nll_exact": float(-exact.mean()),
    }


def digits_bpd(ckpt: str, n: int, seed: int, trace: str) -> dict:
    state = sd.training.load_checkpoint(ckpt)  # for its step
    model = sd.load_model(ckpt, "ema", dtype=torch.float64)
    x, _ = sd.data.load_digits("test", dtype=torch.float64)
    x = x[:n]
    start = time.perf_counter()
    out = sd.bits_per_dim(model, x, levels=17, draws=1, generator=torch.Generator().manual_seed(seed),
                          dtype=torch.float64, trace=trace, rtol=1e-5, atol=1e-5)
    return {"ckpt": ckpt, "step": int(state["step"]), "n": x.shape[0], "bpd": out.mean,
            "ci95_half_width": out.half_width, "nfe": out.nfe, "levels": 17, "trace": trace, "rtol": 1e-5,
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", nargs="+", default=["ring2d", "gmm16d"])
    p.add_argument("--sdes", nargs="+", default=["vp", "edm"], choices=list(sd.sde.SDES))
    p.add_argument("--samples", "--n", dest="n", type=int, default=200, help="exact samples per problem")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt", default=None, help="digits Trainer checkpoint for bits/dim (optional)")
    p.add_argument("--digits-n", type=int, default=100, help="test images for bits/dim")
    p.add_argument("--digits-trace", default="hutchinson", choices=["exact", "hutchinson"],
                   help="hutchinson (1 probe) is ~30x cheaper at D=64 and unbiased; the interval over images "
                        "then holds its variance too (exact: ~7 s per image on one CPU thread)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--replot", action="store_true", help="redo table and plot from the existing JSON")
    args = p.parse_args()
    out = Path(args.out)
    if args.replot:
        results = json.loads((out / "likelihood.json").read_text())
    else:
        results = {"n": args.n, "seed": args.seed, "machine": platform.processor() or platform.machine(),
                   "torch": torch.__version__, "method": "dopri5", "dtype": "float64", "problems": {}}
        start = time.time()
        for name in args.problems:
            mix = get_problem(name)
            x = mix.sample(args.n, torch.Generator().manual_seed(args.seed), dtype=torch.float64)
            for sde_name in args.sdes:
                sde = sd.sde.by_name(sde_name)
                records = [measure(mix, sde, x, tol) for tol in TOLERANCES]
                records.append(measure(mix, sde, x, TOLERANCES[-1], trace="hutchinson", seed=args.seed))
                results["problems"][f"{name}/{sde_name}"] = records
                print(f"{name}/{sde_name} done ({time.time() - start:.0f} s)", flush=True)
        if args.ckpt:
            results["digits"] = digits_bpd(args.ckpt, args.digits_n, args.seed, args.digits_trace)
        else:
            results["digits"] = "skipped: no --ckpt given (bits/dim needs a trained digits model)"
        results["seconds"] = round(time.time() - start, 1)
        out.mkdir(parents=True, exist_ok=True)
        (out / "likelihood.json").write_text(json.dumps(results, indent=1))
    print_table(results)
    plot(results, out / "likelihood.png")
    print(f"wrote {out / 'likelihood.json'} and {out / 'likelihood.png'}")


def print_table(results: dict) -> None:
    print(f"{'problem/sde':<14} {'trace':<10} {'tol':>7} {'NFE':>5} {'ode err/dim':>12} {'err/dim':>10} {'s':>6}")
    for name, records in results["problems"].items():
        for r in records:
            print(f"{name:<14} {r['trace']:<10} {r['tol']:>7.0e} {r['nfe']:>5} {r['ode_error']:>12.2e} "
                  f"{r['error']:>10.2e} {r['seconds']:>6.2f}")
    digits = results.get("digits")
    if isinstance(digits, dict):
        print(f"digits test bits/dim ({digits['ckpt']}, step {digits['step']}, {digits['trace']} trace): "
              f"{digits['bpd']:.4f} +- {digits['ci95_half_width']:.4f} (95% CI, n={digits['n']}, {digits['nfe']} NFE)")
    else:
        print(f"digits: {digits}")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = results["problems"]
    names = list(dict.fromkeys(k.split("/")[0] for k in problems))
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for k, (key, records) in enumerate((k, r) for k, r in problems.items() if k.startswith(name + "/")):
            rows = [r for r in records if r["trace"] == "exact"]
            color = f"C{k}"
            sde_name = key.split("/")[1]
            ax.loglog([r["nfe"] for r in rows], [r["ode_error"] for r in rows], "o-", color=color,
                      label=f"{sde_name}: ODE error (exact p_T)")
            ax.loglog([r["nfe"] for r in rows], [r["error"] for r in rows], "s--", color=color, alpha=0.6,
                      label=f"{sde_name}: vs closed form (with prior)")
        ax.set(title=f"{name}: |log p_t_eps error| per dim, dopri5, tol 1e-2..1e-7", xlabel="NFE",
               ylabel="mean abs error (nats/dim)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
