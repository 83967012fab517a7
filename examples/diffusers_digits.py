"""A diffusers model, scoresde's solvers: a randomly initialised diffusers `UNet2DModel` trained
briefly on the 8x8 digits exactly as diffusers trains (`DDPMScheduler.add_noise`, epsilon
target, 1000 discrete timesteps, `EMAModel`), then sampled from the same starting noise at equal
NFE by

  diffusers' own schedulers (DDIM, DPM-Solver++(2M), UniPC) in diffusers' sampling loop;
  scoresde's solvers through `scoresde.interop.SolverScheduler` in that same loop;
  `scoresde.sample` on `scoresde.interop.from_diffusers(unet, scheduler)` (a ScoreModel under
  the DiscreteVPSDE of the scheduler's alphas_cumprod), on scoresde's log-SNR grid.

Sample quality is the Frechet distance, in the features of a small digit classifier trained on
the real train split, between 1000 samples and the 297 test digits; the floor is the same
distance for 1000 real train digits (a perfect sampler scores there). Every sampler ends with
the step to sigma = 0 (diffusers: the last step; scoresde.sample: denoise=True), counted in NFE.
Writes table.md/json and samples.png (one grid per sampler at the smallest NFE, and real digits).

    python examples/diffusers_digits.py [--quick] [--out DIR] [--train-steps N] [--nfe 10 20]

Needs diffusers: pip install "scoresde[diffusers]" (nothing is downloaded).
"""
from __future__ import annotations

import textwrap
from typing import Callable, Dict, List

import torch

try:
    import diffusers
    from diffusers.training_utils import EMAModel
except ImportError as err:  # an optional dependency
    raise ImportError('this example needs diffusers: pip install "scoresde[diffusers]"') from err

import scoresde as sd
from _common import Stopwatch, parse_args, pyplot, save_figure, write_table
from scoresde.bench import classifier_frechet, image_grid, train_digit_classifier
from scoresde.interop import SolverScheduler, from_diffusers


def make_unet(quick: bool) -> diffusers.UNet2DModel:
    channels = (16, 32) if quick else (32, 64)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=channels,
                                 layers_per_block=1, norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))


def train(unet: diffusers.UNet2DModel, scheduler: diffusers.DDPMScheduler, x: torch.Tensor, steps: int,
          batch_size: int, seed: int) -> diffusers.UNet2DModel:
    """diffusers' recipe: x_t = scheduler.add_noise(x0, noise, k) at integer timesteps k,
    MSE to the noise; returns the EMA weights (what one samples from)."""
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    ema = EMAModel(unet.parameters(), decay=0.999)  # with diffusers' warm-up: min(decay, (1+n)/(10+n))
    n_timesteps = scheduler.config.num_train_timesteps
    for _ in range(steps):
        x0 = x[torch.randint(0, x.shape[0], (batch_size,), generator=g)]
        noise = torch.randn(x0.shape, generator=g)
        k = torch.randint(0, n_timesteps, (batch_size,), generator=g)
        loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(x0, noise, k), k).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.step(unet.parameters())
    ema.copy_to(unet.parameters())
    return unet.eval().requires_grad_(False)


@torch.no_grad()
def diffusers_loop(unet, scheduler, x_T: torch.Tensor, nfe: int) -> torch.Tensor:
    """diffusers' sampling loop, as its pipelines write it; one model call per timestep."""
    scheduler.set_timesteps(nfe)
    x = x_T * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x).prev_sample
    return x


def samplers(unet, ddpm: diffusers.DDPMScheduler) -> Dict[str, Callable[[torch.Tensor, int], torch.Tensor]]:
    """name -> (x_T, nfe) -> samples; every entry spends exactly nfe network evaluations."""
    config = ddpm.config

    def in_diffusers_loop(make_scheduler):
        return lambda x_T, nfe: diffusers_loop(unet, make_scheduler(), x_T, nfe)

    model = from_diffusers(unet, ddpm)

    def with_sample(solver):
        def run(x_T, nfe):
            steps = sd.solvers.get(solver).steps_for_nfe(nfe - 1)  # + 1 final denoising evaluation
            out = sd.sample(model, x_T=x_T, solver=solver, steps=steps, schedule="logsnr", denoise=True)
            assert out.nfe == nfe, (solver, out.nfe, nfe)
            return out.x
        return run

    return {
        "diffusers DDIMScheduler (trailing)": in_diffusers_loop(
            lambda: diffusers.DDIMScheduler.from_config(config, timestep_spacing="trailing", clip_sample=False)),
        "diffusers DPMSolverMultistepScheduler": in_diffusers_loop(
            lambda: diffusers.DPMSolverMultistepScheduler.from_config(config)),
        "diffusers UniPCMultistepScheduler": in_diffusers_loop(
            lambda: diffusers.UniPCMultistepScheduler.from_config(config)),
        "SolverScheduler ddim (diffusers loop)": in_diffusers_loop(
            lambda: SolverScheduler.from_scheduler(ddpm, solver="ddim")),
        "SolverScheduler dpm++2m (diffusers loop)": in_diffusers_loop(
            lambda: SolverScheduler.from_scheduler(ddpm, solver="dpm++2m")),
        "scoresde.sample ddim": with_sample("ddim"),
        "scoresde.sample dpm++2m": with_sample("dpm++2m"),
        "scoresde.sample unipc": with_sample("unipc"),
        "scoresde.sample ipndm": with_sample("ipndm"),
    }


def main(argv=None) -> None:
    def options(p):
        p.add_argument("--train-steps", type=int, default=None, help="default 2000 (--quick: 40)")
        p.add_argument("--nfe", type=int, nargs="+", default=None, help="default 10 20 (--quick: 10)")
        p.add_argument("--samples", type=int, default=None, help="default 1000 (--quick: 100)")

    args = parse_args("diffusers_digits", __doc__, options, argv)
    torch.set_num_threads(1)  # small tensors: one thread is as fast, and kind to a shared machine
    train_steps = args.train_steps or (40 if args.quick else 2000)
    nfes = args.nfe or ([10] if args.quick else [10, 20])
    n = args.samples or (100 if args.quick else 1000)

    clock = Stopwatch()
    x_train, y_train = sd.data.load_digits("train")
    x_test, _ = sd.data.load_digits("test")
    ddpm = diffusers.DDPMScheduler(num_train_timesteps=1000)  # DDPM's linear betas 1e-4 .. 0.02
    torch.manual_seed(args.seed)  # the network's initialization
    unet = train(make_unet(args.quick), ddpm, x_train, train_steps, batch_size=64 if args.quick else 128,
                 seed=args.seed)
    train_seconds = clock()
    judge = train_digit_classifier(x_train, y_train, epochs=3 if args.quick else 30, seed=args.seed + 1)
    real = x_train[torch.randperm(x_train.shape[0], generator=torch.Generator().manual_seed(args.seed))[:n]]
    floor = classifier_frechet(judge, real, x_test)
    print(f"trained {train_steps} steps in {train_seconds:.0f} s; floor FD(train, test) = {floor:.3g}")

    x_T = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(args.seed + 2))
    rows: List[dict] = []
    shown: Dict[str, torch.Tensor] = {"real digits (train)": real}
    for name, run in samplers(unet, ddpm).items():
        for nfe in nfes:
            watch = Stopwatch()
            x = run(x_T.clone(), nfe)
            seconds = watch()
            distance = classifier_frechet(judge, x, x_test)
            rows.append({"sampler": name, "NFE": nfe, "Frechet distance": distance, "x floor": distance / floor,
                         "seconds": seconds})
            if nfe == min(nfes):
                shown[f"{name}, NFE {nfe}"] = x
    rows.append({"sampler": "floor: real train digits", "NFE": 0, "Frechet distance": floor, "x floor": 1.0,
                 "seconds": 0.0})
    write_table(args.out, "table", rows, intro=(
        f"diffusers UNet2DModel trained {train_steps} steps with diffusers' DDPM recipe on the digits train split; "
        f"{n} samples from the same noise; Frechet distance to the 297 test digits in a digit classifier's features."))

    plt = pyplot()
    cols = 5
    nrows = -(-len(shown) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.6 * cols, 2.9 * nrows))
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, x) in zip(axes.flat, shown.items()):
        # white gaps between tiles, pixels drawn as blocks (not smoothed), titles wrapped at words
        ax.imshow(image_grid(x[:36].clamp(-1, 1), nrow=6, pad_value=-1.0).numpy(), cmap="gray_r", vmin=-1, vmax=1,
                  interpolation="nearest")
        ax.set_title(textwrap.fill(title, 28, break_long_words=False), fontsize=8)
    save_figure(fig, args.out / "samples.png")
    print(f"done in {clock():.0f} s")


if __name__ == "__main__":
    main()
