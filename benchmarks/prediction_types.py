"""Which network parameterization `scoresde train` should default to: the same small MLP trained
on a 2-D toy set with each prediction type, then sampled by the probability-flow ODE (dpm++2m,
20 steps) and by the reverse SDE (euler-maruyama, 200 steps); sliced W2 to the held-out split,
next to the prior's and the train-vs-test floor.

    OMP_NUM_THREADS=1 python benchmarks/prediction_types.py [--data moons] [--steps 600] [--seeds 0 1 2]

Writes benchmarks/results/prediction_types.json (and prints a table).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import scoresde as sd
from scoresde.data import load_data
from scoresde.metrics import sliced_wasserstein, two_sample_floor

PREDICTIONS = ("eps", "v", "x0", "score")
SAMPLERS = {"dpm++2m (ODE), 20 steps": dict(solver="dpm++2m", steps=20),
            "euler-maruyama (SDE), 200 steps": dict(solver="euler-maruyama", steps=200)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="moons")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--out", default="benchmarks/results/prediction_types.json")
    args = p.parse_args()
    started = time.perf_counter()
    train, test = load_data(args.data, "train"), load_data(args.data, "test").x.double()
    sde = sd.VPSDE()

    def metric(a, b):
        return float(sliced_wasserstein(a.double(), b, generator=torch.Generator().manual_seed(9)))

    floor = two_sample_floor(lambda a, b: sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(9)),
                             lambda k, g: train.x.double()[torch.randperm(len(train), generator=g)[:k]], args.n,
                             repeats=5, generator=torch.Generator().manual_seed(1))
    prior = metric(sde.prior_sample((args.n, *train.shape), generator=torch.Generator().manual_seed(2)), test)
    rows = []
    for prediction in PREDICTIONS:
        for seed in args.seeds:
            torch.manual_seed(seed)
            model = sd.ScoreModel(sd.nets.MLP(train.shape[0], hidden=64, depth=2), sde, prediction=prediction)
            trainer = sd.Trainer(model, train.x, batch_size=256, lr=3e-3, warmup_steps=100, seed=seed,
                                 progress=False).fit(args.steps)
            for name, options in SAMPLERS.items():
                with torch.no_grad():
                    out = sd.sample(trainer.ema_model, shape=(args.n, *train.shape),
                                    generator=torch.Generator().manual_seed(100 + seed), **options)
                x = out.x
                rows.append(dict(prediction=prediction, seed=seed, sampler=name, nfe=out.nfe,
                                 sliced_w2=metric(x, test), max_abs=float(x.abs().max())))
                print(f"{prediction:6s} seed {seed} {name:32s} sliced W2 {rows[-1]['sliced_w2']:.4f} "
                      f"max |x| {rows[-1]['max_abs']:.1f}", flush=True)
    result = dict(data=args.data, steps=args.steps, seeds=args.seeds, n=args.n, net="MLP(hidden=64, depth=2)",
                  sde=repr(sde), prior=prior, floor=dict(mean=float(floor.mean), std=float(floor.std)), rows=rows,
                  seconds=round(time.perf_counter() - started, 1), torch_threads=torch.get_num_threads())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"\nprior {prior:.4f}, floor {float(floor.mean):.4f} +- {float(floor.std):.4f}; median over seeds:")
    for prediction in PREDICTIONS:
        cells = []
        for name in SAMPLERS:
            values = sorted(r["sliced_w2"] for r in rows if r["prediction"] == prediction and r["sampler"] == name)
            cells.append(f"{name}: {values[len(values) // 2]:.4f}")
        print(f"  {prediction:6s} " + " | ".join(cells))
    print(f"wrote {args.out} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
