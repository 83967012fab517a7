"""The lecture's 1-D picture: noise carried into a two-peaked density, with the exact score.

The data are 0.4 N(-1, 0.3^2) + 0.6 N(1, 0.3^2). Under the VP SDE every noised density p_t is
again a Gaussian mixture, known in closed form, and so is its score: no network is trained here,
`GaussianMixture.score_model` serves the exact score. The figure shows

1. the forward SDE dx = -beta/2 x dt + sqrt(beta) dW noising data samples, over the heat map of
   p_t(x): the two peaks melt into N(0, 1) by t = 1;
2. the probability-flow ODE dx/dt = -beta/2 (x + score) run backwards from N(0, 1) draws: smooth
   paths that never cross (in 1-D the flow is monotone: it is the quantile map, so the lowest
   40% of the noise lands in the 40% peak);
3. the reverse-time SDE from the *same* starting points: jagged paths that wander across the
   valley, yet end with the same distribution;
4. histograms of many endpoints of both against the exact density p_{t_eps}.

The table gives each sampler's W2 distance to exact samples next to the two-sample floor (the
distance between two exact sample sets of the same size: a perfect sampler scores there), and for
the ODE the distance of every endpoint to where the exact flow must take it: in 1-D that is the
monotone transport map F_{t_eps}^{-1}(F_T(x_T)), computable from the exact CDFs.

    python examples/gaussian_to_bimodal_1d.py [--quick] [--out DIR]
"""
from __future__ import annotations

import torch

import scoresde as sd
from _common import Stopwatch, parse_args, pyplot, save_figure, write_table

LIMIT = 3.0  # the x range shown, [-3, 3]


def density_map(truth: sd.data.GaussianMixture, sde: sd.VPSDE, ts: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Exact p_t(x) on the grid, shape (len(xs), len(ts)): one batched call, a time per point."""
    x = xs.repeat(len(ts))[:, None]
    t = ts.repeat_interleave(len(xs))
    return truth.log_prob_t(x, t, sde).exp().reshape(len(ts), len(xs)).T


def mixture_cdf(truth: sd.data.GaussianMixture, sde: sd.VPSDE, x: torch.Tensor, t: float) -> torch.Tensor:
    """Exact CDF of p_t at x (B,): p_t is the mixture of N(alpha mu_k, alpha^2 var_k + sigma^2)."""
    alpha, sigma = float(sde.alpha(t)), float(sde.sigma(t))
    mean = alpha * truth.means[:, 0]
    std = (alpha**2 * truth.covariances[:, 0, 0] + sigma**2).sqrt()
    return (truth.weights * torch.special.ndtr((x[:, None] - mean) / std)).sum(1)


def transport_map(truth: sd.data.GaussianMixture, sde: sd.VPSDE, z: torch.Tensor) -> torch.Tensor:
    """Where the probability-flow ODE must carry z (B,) from T to t_eps: in 1-D a flow never lets
    paths cross, so it is the monotone map F_{t_eps}^{-1}(F_T(z)) (inverted by bisection)."""
    target = mixture_cdf(truth, sde, z, sde.T)
    lo, hi = torch.full_like(z, -10.0), torch.full_like(z, 10.0)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        below = mixture_cdf(truth, sde, mid, sde.t_eps) < target
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


def forward_paths(sde: sd.VPSDE, x0: torch.Tensor, steps: int, generator: torch.Generator):
    """Euler-Maruyama on the forward SDE from t = 0 to T: times (steps + 1,), paths (steps + 1, B, 1)."""
    ts = torch.linspace(0, sde.T, steps + 1, dtype=torch.float64)
    x, path = x0, [x0]
    for t, t_next in zip(ts[:-1].tolist(), ts[1:].tolist()):
        dt = t_next - t
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x = x + sde.drift(x, t) * dt + sde.diffusion(x, t) * dt**0.5 * noise
        path.append(x)
    return ts, torch.stack(path)


def main(argv=None) -> None:
    args = parse_args("gaussian_to_bimodal_1d", __doc__, argv=argv)
    n_paths, n_hist, steps = (12, 2000, 100) if args.quick else (16, 20000, 500)
    sde = sd.VPSDE()
    truth = sd.data.GaussianMixture.bimodal_1d()
    oracle = truth.score_model(sde)  # exact score, and it counts its evaluations (NFE)
    gen = torch.Generator().manual_seed(args.seed)
    f64 = dict(dtype=torch.float64)

    # The reverse processes start from the prior N(0, 1) at T = 1; the same starting points
    # serve the ODE and the SDE, so their paths can be compared one to one.
    x_T = sde.prior_sample((n_hist, 1), generator=gen, **f64)
    runs = {
        "probability-flow ODE (dpm++2m)": dict(solver="dpm++2m"),
        "reverse SDE (Euler-Maruyama)": dict(solver="euler_maruyama", generator=gen),
    }
    results = {}
    for name, options in runs.items():
        # a uniform grid in t, fine enough that the recorded paths look continuous
        results[name] = sd.sample(oracle, x_T=x_T, steps=steps, schedule="uniform", return_trajectory=True, **options)

    exact = truth.sample(n_hist, gen, **f64)
    floor = sd.metrics.two_sample_floor(sd.metrics.sliced_wasserstein, lambda n, g: truth.sample(n, g, **f64), n_hist)
    rows = []
    low_noise = x_T[:, 0] < x_T[:, 0].quantile(0.4)  # the lowest 40% of the starting noise
    exact_map = transport_map(truth, sde, x_T[:, 0])
    # a tight adaptive solve of the same ODE: what is left of the error above is the solver's
    tight = sd.sample(oracle, x_T=x_T, solver="torchdiffeq", steps=None, rtol=1e-9, atol=1e-9)
    for name, res in {**results, "probability-flow ODE (dopri5, rtol 1e-9)": tight}.items():
        x0 = res.x[:, 0]
        rows.append({
            "sampler": name, "steps": "adaptive" if res is tight else steps, "NFE": res.nfe, "seconds": res.seconds,
            "W2 to exact samples": float(sd.metrics.sliced_wasserstein(res.x, exact)),
            "floor (mean +- std)": f"{float(floor.mean):.4f} +- {float(floor.std):.4f}",
            "mass in left peak": float((x0 < 0).double().mean()),
            "lowest 40% of noise -> left peak": float((x0[low_noise] < 0).double().mean()),
            "order of particles kept": bool(torch.equal(torch.argsort(x_T[:, 0]), torch.argsort(x0))),
            "max distance to the exact map": float((x0 - exact_map).abs().max()),
        })
    share = float((exact_map < 0).double().mean())
    write_table(args.out, "table", rows, intro=(
        f"VP SDE, exact score, {n_hist} samples from the same N(0, 1) draws. W2: the exact 1-D Wasserstein-2 "
        "distance to as many exact samples; the floor is its value between two exact sample sets. With two peaks, "
        "W2 between finite sets is dominated by how many points land in each peak: here "
        f"{share:.4f} of the starting points lie below the 40% quantile of p_T (exactly 0.4 only in the limit). "
        "The exact map is F_{t_eps}^{-1}(F_T(x_T)), where the probability-flow ODE must carry each point; the "
        "reverse SDE has no such map (its paths cross), so that column only means something for the ODE."))

    # ---- the figure ----
    plt = pyplot()
    ts = torch.linspace(sde.t_eps, sde.T, 200 if args.quick else 400, **f64)
    xs = torch.linspace(-LIMIT, LIMIT, 200 if args.quick else 400, **f64)
    p = density_map(truth, sde, ts, xs)
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2), gridspec_kw={"width_ratios": [3, 3, 3, 1.3]}, sharey=True)

    def heat(ax, title, reverse):
        ax.imshow(p, origin="lower", aspect="auto", cmap="magma", extent=(sde.t_eps, sde.T, -LIMIT, LIMIT))
        ax.set_xlim((sde.T, 0) if reverse else (0, sde.T))  # reverse time runs right to left in t
        ax.set_ylim(-LIMIT, LIMIT)
        ax.set_xlabel("t  (" + ("reverse time: noise -> data" if reverse else "forward time: data -> noise") + ")")
        ax.set_title(title, fontsize=10)

    # a path's colour says which peak it ends in (starts in, for the forward SDE)
    colors = {True: "deepskyblue", False: "white"}
    t_fwd, fwd = forward_paths(sde, truth.sample(n_paths, gen, **f64), steps, gen)
    heat(axes[0], "forward SDE noises data; heat map: exact $p_t(x)$", reverse=False)
    for j in range(n_paths):
        axes[0].plot(t_fwd, fwd[:, j, 0], lw=0.6, color=colors[bool(fwd[0, j, 0] > 0)])
    axes[0].set_ylabel("x")
    axes[0].legend(handles=[plt.Line2D([], [], color=colors[True], label="path of the right peak (x > 0)"),
                            plt.Line2D([], [], color=colors[False], label="path of the left peak (x < 0)")],
                   fontsize=7, loc="lower right", facecolor="0.3", labelcolor="white", framealpha=0.8)
    for ax, (name, res) in zip(axes[1:3], results.items()):
        heat(ax, f"{name}: {n_paths} paths from N(0, 1)", reverse=True)
        path = res.trajectory[:, :n_paths, 0]
        for j in range(n_paths):
            ax.plot(res.times, path[:, j], lw=0.6, color=colors[bool(path[-1, j] > 0)])

    ax = axes[3]
    bins = torch.linspace(-LIMIT, LIMIT, 61)
    for (name, res), color in zip(results.items(), ("tab:orange", "tab:blue")):
        ax.hist(res.x[:, 0].numpy(), bins=bins.numpy(), density=True, orientation="horizontal", histtype="step",
                color=color, label=name.split(" (")[0])
    exact_density = truth.log_prob_t(xs[:, None], sde.t_eps, sde).exp()
    ax.plot(exact_density, xs, color="k", lw=1, label="exact $p_{t_\\epsilon}$")
    ax.set_title(f"endpoints ({n_hist})", fontsize=10)
    ax.set_xlabel("density")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    save_figure(fig, args.out / "gaussian_to_bimodal_1d.png", dpi=80)


if __name__ == "__main__":
    main()
