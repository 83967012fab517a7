"""Time per sampling step beyond the network's own cost: native solvers against torchdiffeq's
fixed-grid methods and torchsde, for the MLP (batch 4096), the digits U-Net (batch 64) and the
analytic ring2d oracle (batch 2000).

    OMP_NUM_THREADS=1 python benchmarks/overhead.py [--device cuda] [--dtype bfloat16] [--steps 50] [--repeats 5]

For each network, `forward` is the median time of one raw network call (the time input already
made), `wrapper` the ScoreModel's own cost per evaluation (an identity network in its place),
and for each solver `ratio` = wall time of a whole `sample` call / (counted NFE x
forward): 1.0 means the solver costs nothing beyond its evaluations. Every time is the median
of `--repeats` runs after `--warmup` runs; on CUDA each is bracketed by synchronizations.
`--clock process` times this process's CPU time instead of the wall time (on a CPU shared with
other jobs; with OMP_NUM_THREADS=1 it is the run's own time).
`--dtype bfloat16` is the Trainer's bf16: the networks' weights and the samples stay float32
and every network call runs under `torch.autocast(device, torch.bfloat16)` (the raw forward too,
so the ratio compares like with like); the analytic oracle is left in float32 without autocast.
`--nets` picks a subset of the three networks.
Targets (issue 7): native fixed-step ratio <= 1.10; native Euler-Maruyama at least 5x faster
per step than torchsde's euler on the analytic problem. Writes overhead.json and overhead.png.

    OMP_NUM_THREADS=1 python benchmarks/overhead.py --grad [--nets mlp oracle] [--solvers ...] [--steps 10]

`--grad` (issue 18: differentiable grids must keep the speed of a solve that asks for no
gradient) times, per native fixed-step ODE solver on its default grid: `nograd`, the ordinary
solve (no autograd); `grad_forward`, the same solve with `enable_grad=True` from a copy of the
grid that requires grad (the coefficients become tensors and autograd records the graph); and
`grad`, that solve plus the backward pass of the mean square of the endpoint to the grid. The
networks' weights are frozen (the gradient reaches the grid only). It reports each against
`nograd` and `nograd`'s own ratio wall / (NFE x forward), which is comparable to overhead.json's,
and writes overhead_grad.json and overhead_grad.png.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import scoresde as sd
from scoresde.data.problems import get_problem

# (label, solver, options): native fixed-step ODE and SDE solvers, then the library backends
RUNS = [
    ("euler", "euler", {}),
    ("heun", "heun", {}),
    ("dpm++2m", "dpm++2m", {}),
    ("ipndm", "ipndm", {}),
    ("euler_maruyama", "euler_maruyama", {}),
    ("ancestral", "ancestral", {}),
    ("torchdiffeq euler", "torchdiffeq", {"method": "euler"}),
    ("torchdiffeq rk4", "torchdiffeq", {"method": "rk4"}),
    ("torchsde euler", "torchsde", {"method": "euler"}),
]


#: --nets names -> the setups of `_setups` ("identity": a network that returns its input, batch
#: 64, so a solve's time is the solver's and the ScoreModel's own; not in the default three)
NETS = ("mlp", "unet", "oracle", "identity")


#: --clock: wall time, or this process's CPU time (on a CPU shared with other jobs the wall time
#: counts their turns too; with OMP_NUM_THREADS=1 the process time is the run's own)
CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def _timed(fn, device: torch.device, repeats: int, warmup: int = 1, clock=time.perf_counter) -> float:
    for _ in range(warmup):  # allocations, lazy init, cuDNN autotuning
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = clock()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(clock() - start)
    return statistics.median(times)


class _Identity(torch.nn.Module):
    def forward(self, x, t):
        return x


def _setups(device: torch.device, dtype: torch.dtype, nets=NETS):
    """(name, model, shape, autocast?) of each network in `nets`; bfloat16: float32 weights
    under autocast (the oracle without)."""
    sde = sd.VPSDE()
    bf16 = dtype == torch.bfloat16
    weights = torch.float32 if bf16 else dtype
    setups = []
    if "mlp" in nets:
        mlp = sd.ScoreModel(sd.nets.MLP(dim=2), sde, prediction="eps").to(device=device, dtype=weights).eval()
        setups.append(("MLP (2-D, batch 4096)", mlp, (4096, 2), bf16))
    if "unet" in nets:
        unet = sd.ScoreModel(sd.nets.UNet(in_channels=1), sde, prediction="eps").to(device=device, dtype=weights).eval()
        setups.append(("UNet (1x8x8, batch 64)", unet, (64, 1, 8, 8), bf16))
    if "oracle" in nets:
        setups.append(("ring2d oracle (batch 2000)", get_problem("ring2d").score_model(sde), (2000, 2), False))
    if "identity" in nets:
        setups.append(("identity network (batch 64)", sd.ScoreModel(_Identity(), sde, prediction="eps"), (64, 2), False))
    return setups, weights


def measure(device: torch.device, dtype: torch.dtype, steps: int, repeats: int, nets=NETS[:3], warmup: int = 1,
            clock=time.perf_counter) -> dict:
    results = {}
    setups, dtype = _setups(device, dtype, nets)  # bfloat16: samples in float32
    for name, model, shape, bf16 in setups:
        def autocast():
            return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

        x = model.sde.prior_sample(shape, torch.Generator(device=device).manual_seed(0), dtype=dtype, device=device)
        t = torch.full((shape[0],), 0.5, dtype=dtype, device=device)
        t_in = model.network_time(t)
        identity = sd.ScoreModel(lambda x_in, t_net: x_in, model.sde, prediction="eps")
        with torch.no_grad(), autocast():
            forward = _timed(lambda: model.net(x, t_in), device, repeats, warmup, clock)
            # the ScoreModel's own cost per evaluation (time input, alpha/sigma, eps -> x0)
            wrapper = _timed(lambda: identity.x0(x, 0.5), device, repeats, warmup, clock)
        rows = {}
        for label, solver, options in RUNS:
            schedule = "uniform" if solver == "torchsde" else None
            gen = torch.Generator(device=device)

            def run():
                gen.manual_seed(0)
                with autocast():
                    return sd.sample(model, x_T=x, solver=solver, steps=steps, schedule=schedule, generator=gen,
                                     **options)

            nfe = run().nfe
            wall = _timed(run, device, repeats, warmup, clock)
            rows[label] = dict(seconds=wall, nfe=nfe, per_step=wall / steps, ratio=wall / (nfe * forward))
        results[name] = dict(forward=forward, wrapper=wrapper, autocast="bfloat16" if bf16 else None, solvers=rows,
                             em_vs_torchsde=rows["torchsde euler"]["per_step"] / rows["euler_maruyama"]["per_step"])
    return results


def grad_solvers():
    """The native fixed-step ODE solvers (torchdiffeq's fixed-grid methods are a backend)."""
    return [n for n in sd.solvers.available("ode") if not sd.solvers.get(n).adaptive
            and sd.solvers.get(n).fn.__module__ != "scoresde.solvers.backends"]


def measure_grad(device: torch.device, dtype: torch.dtype, steps: int, repeats: int, nets=NETS[:3],
                 warmup: int = 1, solvers=None, clock=time.perf_counter) -> dict:
    """Per network and solver: the no-grad solve against the same solve with a grid that
    requires grad, forward only and forward + backward (see the module docstring)."""
    results = {}
    setups, dtype = _setups(device, dtype, nets)
    for name, model, shape, _ in setups:
        model.requires_grad_(False)
        x = model.sde.prior_sample(shape, torch.Generator(device=device).manual_seed(0), dtype=dtype, device=device)
        t_in = model.network_time(torch.full((shape[0],), 0.5, dtype=dtype, device=device))
        with torch.no_grad():
            forward = _timed(lambda: model.net(x, t_in), device, repeats, warmup, clock)
        rows = {}
        for solver in solvers or grad_solvers():
            base = sd.sample(model, x_T=x, solver=solver, steps=steps)
            grid = base.times.clone()

            def nograd():
                return sd.sample(model, x_T=x, solver=solver, steps=steps)

            def grad_forward():
                times = grid.clone().requires_grad_(True)
                return sd.sample(model, x_T=x, solver=solver, schedule=times, enable_grad=True), times

            def grad():
                out, times = grad_forward()
                out.x.square().mean().backward()
                return times.grad

            assert torch.equal(grad_forward()[0].x.detach(), base.x), f"{solver}: the grad path computes other numbers"
            assert bool(torch.isfinite(grad()).all()), f"{solver}: a non-finite gradient"
            walls = {key: _timed(fn, device, repeats, warmup, clock) for key, fn in
                     (("nograd", nograd), ("grad_forward", grad_forward), ("grad", grad))}
            rows[solver] = dict(nfe=base.nfe, seconds=walls, per_step={k: v / steps for k, v in walls.items()},
                                ratio=walls["nograd"] / (base.nfe * forward),
                                grad_forward_vs_nograd=walls["grad_forward"] / walls["nograd"],
                                grad_vs_nograd=walls["grad"] / walls["nograd"])
        results[name] = dict(forward=forward, solvers=rows)
    return results


def plot_grad(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.2), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        labels = list(res["solvers"])
        y = range(len(labels))
        for k, (key, color) in enumerate((("grad_forward_vs_nograd", "tab:blue"), ("grad_vs_nograd", "tab:orange"))):
            ax.barh([i + 0.4 * k for i in y], [res["solvers"][s][key] for s in labels], height=0.4, color=color,
                    label="forward with grid grad" if k == 0 else "forward + backward")
        ax.set_yticks([i + 0.2 for i in y], labels)
        ax.axvline(1.0, color="black", lw=1)
        ax.set(title=f"{name}\nforward {res['forward'] * 1e3:.2f} ms", xlabel="time / no-grad solve (--clock)")
        ax.invert_yaxis()
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.2), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        labels = list(res["solvers"])
        ratios = [res["solvers"][k]["ratio"] for k in labels]
        ax.barh(labels, ratios, color=["tab:blue" if "torch" not in k else "tab:orange" for k in labels])
        ax.axvline(1.0, color="black", lw=1)
        ax.axvline(1.1, color="red", lw=1, ls="--", label="target 1.10")
        ax.set(title=f"{name}\nforward {res['forward'] * 1e3:.2f} ms", xlabel="wall time / (NFE x forward)")
        ax.invert_yaxis()
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"],
                   help="bfloat16: float32 weights and samples, networks under bf16 autocast (as Trainer(bf16=True))")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before each measurement")
    p.add_argument("--nets", nargs="+", default=list(NETS[:3]), choices=NETS, help="default: the first three")
    p.add_argument("--grad", action="store_true",
                   help="time the no-grad solve against solves with a grid that requires grad (overhead_grad.json)")
    p.add_argument("--solvers", nargs="+", default=None, choices=grad_solvers(),
                   help="with --grad: a subset of the native fixed-step ODE solvers (default: all)")
    p.add_argument("--clock", default="wall", choices=list(CLOCKS),
                   help="wall time, or this process's CPU time (a CPU shared with other jobs; not for CUDA)")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    if args.clock == "process" and args.device != "cpu":
        p.error("--clock process times the CPU only; use --clock wall with --device " + args.device)
    if args.grad and args.dtype == "bfloat16":
        p.error("--grad times float32 or float64 solves; got --dtype bfloat16")
    device = torch.device(args.device)
    if args.grad:
        return main_grad(args, device)
    if args.dtype == "bfloat16" and device.type == "cpu":
        print("note: bfloat16 autocast on the CPU times CPU bf16 kernels, not the GPU path it stands for")
    results = measure(device, getattr(torch, args.dtype), args.steps, args.repeats, args.nets, args.warmup,
                      CLOCKS[args.clock])
    meta = dict(device=str(device), gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                processor=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                torch=torch.__version__, steps=args.steps, repeats=args.repeats, warmup=args.warmup, dtype=args.dtype,
                clock=args.clock,
                autocast="bfloat16 (networks only; float32 weights and samples)" if args.dtype == "bfloat16" else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead.json").write_text(json.dumps(dict(meta=meta, results=results), indent=1))
    plot(results, out / "overhead.png")
    for name, res in results.items():
        print(f"\n{name}: one forward {res['forward'] * 1e3:.3f} ms, ScoreModel bookkeeping per evaluation "
              f"{res['wrapper'] * 1e3:.3f} ms; {args.steps} steps")
        print("| solver | NFE | wall time | per step | wall / (NFE x forward) |")
        print("|---|---|---|---|---|")
        for label, row in res["solvers"].items():
            print(f"| {label} | {row['nfe']} | {row['seconds'] * 1e3:.1f} ms | {row['per_step'] * 1e3:.3f} ms "
                  f"| {row['ratio']:.2f} |")
        print(f"torchsde euler / native Euler-Maruyama per step: {res['em_vs_torchsde']:.2f}x")
    print(f"\nwrote {out / 'overhead.json'} and {out / 'overhead.png'}")


def main_grad(args, device: torch.device) -> None:
    results = measure_grad(device, getattr(torch, args.dtype), args.steps, args.repeats, args.nets, args.warmup,
                           args.solvers, CLOCKS[args.clock])
    meta = dict(device=str(device), gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                processor=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                torch=torch.__version__, steps=args.steps, repeats=args.repeats, warmup=args.warmup, dtype=args.dtype,
                clock=args.clock,
                solvers=args.solvers or grad_solvers(), loss="mean square of the endpoint, differentiated to the grid (network weights frozen)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead_grad.json").write_text(json.dumps(dict(meta=meta, results=results), indent=1))
    plot_grad(results, out / "overhead_grad.png")
    for name, res in results.items():
        print(f"\n{name}: one forward {res['forward'] * 1e3:.3f} ms; {args.steps} steps")
        print("| solver | NFE | no-grad solve | solve / (NFE x forward) | forward, grid requires grad | "
              "forward + backward |")
        print("|---|---|---|---|---|---|")
        for solver, row in res["solvers"].items():
            print(f"| {solver} | {row['nfe']} | {row['seconds']['nograd'] * 1e3:.1f} ms | {row['ratio']:.2f} | "
                  f"{row['grad_forward_vs_nograd']:.2f}x | {row['grad_vs_nograd']:.2f}x |")
    print(f"\nwrote {out / 'overhead_grad.json'} and {out / 'overhead_grad.png'}")


if __name__ == "__main__":
    main()
