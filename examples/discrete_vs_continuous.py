"""Discrete vs continuous: one trained VP model sampled by the DDPM chain, the reverse SDE and the
probability-flow ODE.

Why DDPM is a discretization of the VP SDE. DDPM's forward chain is
x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z, i = 1..N. Read beta_i = beta(t) dt with dt = 1/N:
then x_i - x_{i-1} ~ -beta(t)/2 x dt + sqrt(beta(t) dt) z, one Euler-Maruyama step of the VP SDE
dx = -beta(t)/2 x dt + sqrt(beta(t)) dW. So the chain's betas map to the SDE's linear beta(t) by
beta_min = N beta_1 and beta_max = N beta_N: Ho et al.'s linspace(1e-4, 0.02, 1000) is
`VPSDE().discrete_betas(1000)` (beta 0.1 -> 20), and `VPSDE.from_betas` maps back. The chain's
signal level alphas_cumprod_i = prod_j (1 - beta_j) and the SDE's alpha(i/N)^2 =
exp(-int_0^{i/N} beta) agree to O(1/N) (log(1 - b) = -b - b^2/2 ...; printed in betas.md).

The DDPM *reverse* chain needs no new sampler: `ancestral` steps to the Gaussian posterior
q(x_s | x_t, x0 = x0_pred) between grid times, which is exactly DDPM's step (with the posterior
variance beta_tilde) when the grid is the chain's own: the times where alpha(t)^2 equals
alphas_cumprod_i (`ddpm_grid` below), run with `final_mean=False` and a final denoising step
(tests/test_examples.py checks it against the chain written out). The chain's first few of its
1000 times lie just past T = 1, where x is N(0, I) to within 1e-4: the grid starts at T, so the
1000-step chain costs 997 evaluations. A strided chain (every k-th index, as in Nichol &
Dhariwal's respacing) is the same step on a coarser grid; DDIM is its deterministic (eta = 0)
version, a first-order solver of the probability-flow ODE.

The same trained model is then sampled by
  the DDPM ancestral chain, N = 1000 steps and strided x10 and x50;
  the continuous reverse SDE: Euler-Maruyama (N and N/10 steps), predictor-corrector (Langevin);
  the probability-flow ODE: Euler, DDIM, DPM-Solver++(2M), adaptive dopri5 (torchdiffeq),
on two data sets: the 2-D ring of 8 Gaussians (an MLP; sliced W2 to exact samples) and the 8x8
digits (the U-Net; Frechet distance in a digit classifier's features to the test images). Every
distance comes with its floor: the same distance for real data (a perfect sampler scores there).
All samplers finish with the denoising step E[x0 | x_t_end] (as DDPM's last step does), counted
in NFE. Writes table.md/json, betas.md, samples.png and quality_vs_nfe.png.

    python examples/discrete_vs_continuous.py [--quick] [--out DIR] [--data toy digits]
        [--digits-ckpt out/examples/digits/model/checkpoint.pt]   # reuse digits.py's model
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List

import torch

import scoresde as sd
from _common import parse_args, pyplot, save_figure, scatter, toy_floor, train_digits_model, train_toy_model, write_table
from scoresde.bench import classifier_frechet, image_grid, train_digit_classifier


def ddpm_grid(sde: sd.VPSDE, N: int, stride: int = 1) -> torch.Tensor:
    """The times of the DDPM chain with N steps (every `stride`-th one), descending from T to t_1,
    for `scoresde.sample(..., schedule=...)`: t_i solves alpha(t_i)^2 = alphas_cumprod_i."""
    alphas_cumprod = torch.cumprod(1 - sde.discrete_betas(N), dim=0)  # i = 1..N, float64
    # alpha^2 = alphas_cumprod and sigma^2 = 1 - alphas_cumprod: invert the log-SNR
    t = sde.t_of_log_snr(0.5 * torch.log(alphas_cumprod / (1 - alphas_cumprod)))[::stride]
    # alphas_cumprod_N is O(1/N) below alpha(T)^2, so the chain's first few times lie just past
    # T, where x is N(0, I) to within alpha^2 < 1e-4: the grid starts at T instead
    return torch.cat([torch.tensor([sde.T], dtype=torch.float64), t[t < sde.T].flip(0)])


def samplers(sde: sd.VPSDE, N: int) -> List[dict]:
    """(family, label, sample() options) of every sampler compared, N = the DDPM chain's length."""
    # final_mean=False: DDPM adds noise on every step but the last one, which is our denoise step
    chain = dict(solver="ancestral", steps=None, final_mean=False)
    return [
        dict(family="DDPM chain", label=f"ancestral, {N} steps", **chain, schedule=ddpm_grid(sde, N)),
        dict(family="DDPM chain", label="strided x10", **chain, schedule=ddpm_grid(sde, N, 10)),
        dict(family="DDPM chain", label="strided x50", **chain, schedule=ddpm_grid(sde, N, 50)),
        dict(family="reverse SDE", label=f"Euler-Maruyama, {N} steps", solver="euler_maruyama", steps=N,
             schedule="uniform"),
        dict(family="reverse SDE", label=f"Euler-Maruyama, {N // 10} steps", solver="euler_maruyama",
             steps=N // 10, schedule="uniform"),
        # per_sample_step=False: Song et al.'s batch-averaged Langevin step (stable in 2-D, README)
        dict(family="reverse SDE", label=f"PC (Langevin), {N // 10} steps", solver="pc", steps=N // 10,
             schedule="uniform", per_sample_step=False),
        dict(family="PF ODE", label=f"Euler, {N // 10} steps", solver="euler", steps=N // 10, schedule="uniform"),
        dict(family="PF ODE", label="DDIM on the x50 grid", solver="ddim", steps=None, schedule=ddpm_grid(sde, N, 50)),
        dict(family="PF ODE", label=f"DPM-Solver++(2M), {N // 50} steps", solver="dpm++2m", steps=N // 50),
        dict(family="PF ODE", label="dopri5, rtol 1e-3", solver="torchdiffeq", steps=None, rtol=1e-3, atol=1e-3),
    ]


@dataclass
class Problem:
    name: str
    model: sd.ScoreModel
    shape: tuple  # (n, *data_shape)
    metric_name: str
    distance: Callable[[torch.Tensor], float]  # samples -> distance to real data
    floor: float  # the distance between real data sets of the same size: mean
    floor_std: float  # and standard deviation over repeated draws
    show: Callable  # (ax, samples, title) -> None

    @property
    def floor_text(self) -> str:
        return f"{self.floor:.3g} +- {self.floor_std:.2g}"


def toy_problem(args) -> Problem:
    n, steps = (500, 300) if args.quick else (2000, 4000)
    model = train_toy_model("ring", steps, seed=args.seed)
    exact = sd.data.sample_toy("ring", n, torch.Generator().manual_seed(args.seed + 1))
    floor = toy_floor("ring", n, args.seed)
    return Problem(f"2-D ring (MLP, {steps} training steps)", model, (n, 2), "sliced W2",
                   lambda x: float(sd.metrics.sliced_wasserstein(x, exact)), float(floor.mean), float(floor.std),
                   scatter)


def digits_problem(args) -> Problem:
    n, steps, epochs = (32, 100, 3) if args.quick else (256, 3000, 30)
    x_train, y_train = sd.data.load_digits("train")
    if args.digits_ckpt is not None:
        trainer = sd.Trainer.from_checkpoint(args.digits_ckpt, x_train, progress=False)
    else:
        trainer = train_digits_model(steps, args.out, args.quick, args.seed)
    x_test, _ = sd.data.load_digits("test")
    judge = train_digit_classifier(x_train, y_train, epochs=epochs, seed=args.seed + 1)
    # the floor: n real training images against the test images, n as for the samples, 5 draws
    gen = torch.Generator().manual_seed(args.seed)
    floors = torch.tensor([classifier_frechet(judge, x_train[torch.randperm(len(x_train), generator=gen)[:n]], x_test)
                           for _ in range(5)])

    def show(ax, x, title):
        ax.imshow(image_grid(x[:36].clamp(-1, 1), nrow=6, pad_value=0), cmap="gray_r", vmin=-1, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=8)

    return Problem(f"8x8 digits (U-Net, {trainer.step} training steps)", trainer.ema_model, (n, 1, 8, 8),
                   "Frechet distance", lambda x: classifier_frechet(judge, x, x_test), float(floors.mean()),
                   float(floors.std()), show)


def main(argv=None) -> None:
    def options(p):
        p.add_argument("--data", nargs="+", choices=("toy", "digits"), default=["toy", "digits"])
        p.add_argument("--digits-ckpt", default=None, help="a Trainer checkpoint of a digits model to reuse")

    args = parse_args("discrete_vs_continuous", __doc__, options, argv)
    sde = sd.VPSDE()
    N = 200 if args.quick else 1000  # the DDPM chain's length; --quick shortens every budget 5x

    # how close the discrete chain and the continuous SDE are: alphas_cumprod_i vs alpha(i/N)^2
    gap_rows = []
    for n_steps in (10, 100, 1000):
        alphas_cumprod = torch.cumprod(1 - sde.discrete_betas(n_steps), dim=0)
        t = torch.arange(1, n_steps + 1, dtype=torch.float64) / n_steps
        gap = float((alphas_cumprod - sde.alpha(t) ** 2).abs().max())
        gap_rows.append({"N": n_steps, "max over i of the gap": gap, "N x gap": n_steps * gap})
    write_table(args.out, "betas", gap_rows, intro=(
        "DDPM's betas for VPSDE() (beta_min 0.1, beta_max 20): beta_i = beta(t_{i-1}) / N. The chain's "
        "alphas_cumprod_i and the SDE's alpha(i/N)^2 agree to O(1/N): N x gap stays constant."))

    problems = [toy_problem(args) if d == "toy" else digits_problem(args) for d in args.data]
    specs = samplers(sde, N)
    rows, samples = [], {}
    for problem in problems:
        for spec in specs:
            options = {k: v for k, v in spec.items() if k not in ("family", "label")}
            res = sd.sample(problem.model, shape=problem.shape, denoise=True,
                            generator=torch.Generator().manual_seed(args.seed), **options)
            samples[problem.name, spec["label"]] = res.x
            rows.append({"data": problem.name, "family": spec["family"], "sampler": spec["label"], "NFE": res.nfe,
                         "seconds": round(res.seconds, 2), "metric": problem.metric_name, "distance": problem.distance(res.x),
                         "floor (real data)": problem.floor_text})
            print(f"{problem.name}: {spec['family']}, {spec['label']}: NFE {res.nfe}, {res.seconds:.1f} s, "
                  f"{problem.metric_name} {rows[-1]['distance']:.4g} (floor {problem.floor_text})")
    write_table(args.out, "table", rows, intro=(
        "Sample quality against cost: every sampler from the same model and seed, denoised at the end "
        "(counted in NFE). The floor is the distance between real data sets of the same size."))

    plt = pyplot()
    # samples side by side: one row per data set
    fig, axes = plt.subplots(len(problems), len(specs), figsize=(2.0 * len(specs), 2.7 * len(problems)), squeeze=False)
    for r, problem in enumerate(problems):
        for c, spec in enumerate(specs):
            row = next(x for x in rows if x["data"] == problem.name and x["sampler"] == spec["label"])
            title = f"{spec['family']}\n{spec['label']}\nNFE {row['NFE']}, dist {row['distance']:.3g}"
            problem.show(axes[r, c], samples[problem.name, spec["label"]], title)
        axes[r, 0].set_ylabel(problem.name, fontsize=8)
    fig.suptitle("one trained VP model, ten samplers (dist: " +
                 "; ".join(f"{p.metric_name}, floor {p.floor_text}" for p in problems) + ")", fontsize=9)
    fig.tight_layout()
    save_figure(fig, args.out / "samples.png", dpi=80)

    # quality against NFE, one panel per data set; a sampler keeps its colour across panels
    fig, axes = plt.subplots(1, len(problems), figsize=(4.5 * len(problems) + 3, 4), squeeze=False)
    markers = {"DDPM chain": "s", "reverse SDE": "^", "PF ODE": "o"}
    for ax, problem in zip(axes[0], problems):
        for c, spec in enumerate(specs):
            row = next(x for x in rows if x["data"] == problem.name and x["sampler"] == spec["label"])
            ax.scatter(row["NFE"], row["distance"], marker=markers[spec["family"]], s=40, color=f"C{c}",
                       label=f"{spec['family']}: {spec['label']}")
        ax.axhline(problem.floor, color="k", ls="--", lw=0.8, label="floor (real data), +- 1 std")
        ax.axhspan(problem.floor - problem.floor_std, problem.floor + problem.floor_std, color="k", alpha=0.1)
        ax.set_xscale("log")
        ax.set_xlabel("NFE (counted network evaluations)")
        ax.set_ylabel(problem.metric_name + " to real data")
        ax.set_title(problem.name, fontsize=9)
    axes[0, -1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    save_figure(fig, args.out / "quality_vs_nfe.png")


if __name__ == "__main__":
    main()
