"""deis' polynomial basis, the multistep solvers' lower_order_final and final_step, and heun's
and edm-sde's last_step, measured (the source of the deis default, of the final-step defaults in
scoresde/solvers/exponential.py and of the last_step default in scoresde/solvers/ode.py).

Terminal RMSE (1000 samples, float64) against the reference PF-ODE solve from the same x_T:
final_step t_end -> reference at t_end; denoise -> exact D(reference at t_end);
zero -> reference continued to sigma = 0 by the O(sigma_hat^3) midpoint (y + D(y))/2 at t_end
(y = x/alpha), since the PF-ODE in y near sigma_hat = 0 is dy/dsigma_hat = -sigma_hat score.
Usage (results in benchmarks/results/):
    OMP_NUM_THREADS=1 python benchmarks/final_steps.py deis benchmarks/results/final_steps_deis.json
    OMP_NUM_THREADS=1 python benchmarks/final_steps.py final benchmarks/results/final_steps_logsnr.json
    SCHEDULE=karras OMP_NUM_THREADS=1 python benchmarks/final_steps.py final benchmarks/results/final_steps_karras.json
    OMP_NUM_THREADS=1 python benchmarks/final_steps.py last_step benchmarks/results/final_steps_last_step.json
last_step: heun, and edm-sde with S_churn=0 (its deterministic form: Heun in sigma_hat), with an
Euler or a Heun last step, on the logsnr and karras grids, within NFE budgets of 5, 10, 20 (never
over: an Euler last step spends an odd count, a Heun one an even count; the rows record it).
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


def run(p, x_T, refs, solver, nfe, schedule, exact_budget=True, **opts):
    """Terminal RMSE within a budget of `nfe` evaluations (and the evaluations spent when
    exact_budget=False, where a solver's counts may skip the budget)."""
    info = sd.solvers.get(solver)
    steps = info.steps_for_nfe(nfe, opts)
    out = sd.sample(p.model, x_T=x_T.clone(), solver=solver, steps=steps, schedule=schedule, **opts)
    assert out.nfe == info.nfe(steps, opts) <= nfe and (out.nfe == nfe or not exact_budget), (solver, opts, out.nfe, nfe)
    r = rmse(out.x, refs[opts.get("final_step", "t_end")])
    return r if exact_budget else (r, out.nfe)


def summarize_last_step(rows):
    """Geometric mean over problems and grids of rmse(heun last step) / rmse(euler last step)."""
    import math
    for solver in ("heun", "edm-sde"):
        for nfe in (5, 10, 20):
            pairs = {}
            for r in rows:
                if r["solver"] == solver and r["nfe"] == nfe:
                    pairs.setdefault((r["problem"], r["schedule"]), {})[r["last_step"]] = r["rmse"]
            logs = [math.log(v["heun"] / v["euler"]) for v in pairs.values()]
            wins = sum(v["heun"] < v["euler"] for v in pairs.values())
            print(f"{solver} nfe<={nfe}: heun/euler last step rmse, geometric mean {math.exp(sum(logs) / len(logs)):.3f}; "
                  f"heun last step better in {wins}/{len(logs)}", flush=True)


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
        elif which == "last_step":
            for (solver, extra), sched, nfe, last in itertools.product(
                    [("heun", {}), ("edm-sde", {"S_churn": 0.0})], ["logsnr", "karras"], [5, 10, 20], ["euler", "heun"]):
                r, spent = run(p, x_T, refs, solver, nfe, sched, exact_budget=False, last_step=last, **extra)
                rows.append(dict(problem=name, schedule=sched, solver=solver, nfe=nfe, nfe_spent=spent, last_step=last,
                                 options=extra, rmse=r))
                print(rows[-1], flush=True)
        else:
            for solver, nfe, lof, fs in itertools.product(sys.argv[3].split(",") if len(sys.argv) > 3 else ["dpm++2m", "dpm++3m", "unipc", "ipndm", "deis"], [5, 8, 10, 15],
                                                          [0, 1000], ["t_end", "zero", "denoise"]):
                r = run(p, x_T, refs, solver, nfe, SCHEDULE, lower_order_final=lof, final_step=fs)
                rows.append(dict(problem=name, schedule=SCHEDULE, solver=solver, nfe=nfe, lower_order_final=lof,
                                 final_step=fs, rmse=r))
                print(rows[-1], flush=True)
    json.dump(rows, open(out_path, "w"), indent=1)
    if which == "last_step":
        summarize_last_step(rows)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
