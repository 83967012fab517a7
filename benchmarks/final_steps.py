"""deis' polynomial basis, the multistep solvers' lower_order_final and final_step, measured
(the source of the deis default and of the final-step defaults in scoresde/solvers/exponential.py).

Terminal RMSE (1000 samples, float64) against the reference PF-ODE solve from the same x_T:
final_step t_end -> reference at t_end; denoise -> exact D(reference at t_end);
zero -> reference continued to sigma = 0 by the O(sigma_hat^3) midpoint (y + D(y))/2 at t_end
(y = x/alpha), since the PF-ODE in y near sigma_hat = 0 is dy/dsigma_hat = -sigma_hat score.
Usage (results in benchmarks/results/):
    OMP_NUM_THREADS=1 python benchmarks/final_steps.py deis benchmarks/results/final_steps_deis.json
    OMP_NUM_THREADS=1 python benchmarks/final_steps.py final benchmarks/results/final_steps_logsnr.json
    SCHEDULE=karras OMP_NUM_THREADS=1 python benchmarks/final_steps.py final benchmarks/results/final_steps_karras.json
Set FINAL_STEPS_CACHE to a folder to keep the reference solves between runs.
"""
import json, sys, os, itertools
import torch
import scoresde as sd
from scoresde.bench.problems import analytic_problem

torch.set_num_threads(1)
PROBLEMS = ["ring2d/vp", "ring2d/edm", "gmm16d/vp", "gmm16d/edm"]
CACHE = os.environ.get("FINAL_STEPS_CACHE")
SCHEDULE = os.environ.get("SCHEDULE", "logsnr")


def setup(name):
    p = analytic_problem(name)
    sde = p.model.sde
    path = f"{CACHE}/{name.replace('/', '_')}.pt" if CACHE else None
    if path and os.path.exists(path):
        x_T, ref = torch.load(path)
    else:
        x_T = sde.prior_sample((1000, *p.shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        ref = p.reference(x_T).x
        if path:
            torch.save((x_T, ref), path)
    t_end = torch.tensor(sde.t_eps, dtype=torch.float64)
    tt = t_end.expand(ref.shape[0])
    d_ref = p.model.x0(ref, tt)
    y_ref = ref / sde.alpha(t_end)
    refs = {"t_end": ref, "denoise": d_ref, "zero": (y_ref + d_ref) / 2}
    return p, x_T, refs


def rmse(a, b):
    return float(((a - b) ** 2).mean().sqrt())


def run(p, x_T, refs, solver, nfe, schedule, **opts):
    info = sd.solvers.get(solver)
    steps = info.steps_for_nfe(nfe, opts)
    out = sd.sample(p.model, x_T=x_T.clone(), solver=solver, steps=steps, schedule=schedule, **opts)
    assert out.nfe == nfe == info.nfe(steps, opts), (solver, opts, out.nfe, nfe)
    return rmse(out.x, refs[opts.get("final_step", "t_end")])


def main(which, out_path):
    rows = []
    for name in PROBLEMS:
        p, x_T, refs = setup(name)
        print(name, "reference ready", flush=True)
        if which == "deis":
            for sched, nfe, basis, hist in itertools.product(["logsnr", "karras"], [5, 10, 20], ["rho", "log_rho"], [2, 3]):
                r = run(p, x_T, refs, "deis", nfe, sched, basis=basis, history=hist)
                rows.append(dict(problem=name, schedule=sched, nfe=nfe, basis=basis, history=hist, rmse=r))
                print(rows[-1], flush=True)
        else:
            for solver, nfe, lof, fs in itertools.product(sys.argv[3].split(",") if len(sys.argv) > 3 else ["dpm++2m", "dpm++3m", "unipc", "ipndm", "deis"], [5, 8, 10, 15],
                                                          [0, 1000], ["t_end", "zero", "denoise"]):
                r = run(p, x_T, refs, solver, nfe, SCHEDULE, lower_order_final=lof, final_step=fs)
                rows.append(dict(problem=name, schedule=SCHEDULE, solver=solver, nfe=nfe, lower_order_final=lof,
                                 final_step=fs, rmse=r))
                print(rows[-1], flush=True)
    json.dump(rows, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
