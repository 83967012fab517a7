"""Accuracy against NFE: any registered sampler on problems whose answer is known.

A *cell* is one (problem, solver, NFE budget). Every cell of a problem starts from the same
prior noise and (for SDE samplers that take a `noise_fn` callable) the same Gaussian draws, and
records the NFE the model counted, the wall time and these metrics:

- `rmse`: terminal RMSE against the problem's reference solve of the probability-flow ODE from
  the same noise (ODE solvers only; `scoresde.solvers.reference_solve`, float64 for analytic
  problems);
- `sliced_w2`, `mmd`: distance to exact samples of p_{t_end} (analytic problems) or to the
  held-out test split of a trained model's data set (checkpoint problems), next to the
  two-sample floor (the same metric between an independent exact draw, or training samples,
  and that set: a perfect sampler scores there);
- `nll_gap`: mean of -log p_{t_end}(x) over the samples minus the same mean over the exact
  samples, in nats per dimension, under the exact density (analytic problems only). Not a
  divergence: a sampler that collapses onto the modes scores below zero.

Fixed-step solvers run the largest step count whose evaluations fit the budget
(`SolverInfo.steps_for_nfe`); a budget below one step's cost is not run. A cell records both
`requested_nfe` and the counted `nfe`, so a budget a solver cannot meet exactly is never
mislabeled. With `tune=(method, ...)` every fixed-step ODE cell gets a twin per method, with
`schedule="tuned:<method>"` (table row `tuned:<method>:<solver>`): the sampler `scoresde.tune`
fits to that problem, solver and step count on calibration and validation batches of prior
noise (seed + 3, held out from the cells' x_T), run on the cells' x_T; the cell records the
tuning (validation RMSEs, cost in NFE and seconds, grid). `optimize=True` is `tune` with
"nelder-mead". Adaptive solvers run a tolerance sweep instead. A cell that fails (non-finite
values, a solver error, a method that cannot tune it) is recorded with its reason and the run
goes on.

Under `torchrun` the sample batch is split across ranks (every rank draws the full batch's
noise and keeps its rows, so fixed-step results equal the single-process run); rank 0
gathers the samples, computes the metrics and writes the files. Adaptive solvers choose their
steps from an error norm over their own rows and torchsde draws its Brownian path for the
shard's shape, so their sharded results differ from one process's (as two batch sizes would).
"""
from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .. import _checks
from .. import metrics as _metrics
from .._dist import SharedNoise, Shards
from ..solvers import NonFiniteError, available, get, sample
from .problems import Problem, make_problem
from .report import METRICS, TUNED, tuned_method, write_json, write_outputs

__all__ = ["run_benchmark", "DEFAULT_NFES", "QUICK", "ADAPTIVE_TOLERANCES"]

DEFAULT_NFES = (3, 4, 5, 6, 8, 10, 12, 15, 20, 30, 50, 70, 100)
#: tolerance sweeps for adaptive solvers (rtol = atol), loosest first
ADAPTIVE_TOLERANCES = {"torchdiffeq": (1e-2, 1e-3, 1e-4, 1e-5), "scipy": (1e-2, 1e-3, 1e-4, 1e-5),
                       "adaptive-sde": (0.1, 0.05, 0.02, 0.01)}
#: the README's main job: two problems, representative solvers, four budgets (about a minute on 2 CPU cores)
QUICK = dict(
    problems=("ring2d/vp", "gmm16d/edm"),
    solvers=("euler", "heun", "ddim", "dpm++2m", "dpm++3m", "unipc", "ipndm", "euler-maruyama", "ancestral",
             "dpm++2m-sde", "torchdiffeq"),
    nfes=(5, 10, 20, 50),
    n=1000,
    tolerances=2,
)


def _cells(solvers: Sequence[str], nfes: Sequence[int], tolerances: int,
           tune: Sequence[str] = ()) -> List[Tuple[str, Optional[int], Dict]]:
    """(solver, requested NFE or None, options) in run order; budgets that land on a step
    count already listed for that solver are run once, budgets below one step's cost not at
    all; each fixed-step ODE cell is followed by its tuned twins (options["tune"] = method),
    one per method of `tune` that can tune its solver ("coefficients": the solvers whose
    weights `learned-multistep` starts from)."""
    from ..solvers.learned import NATIVE

    cells = []
    sweeps = {get(name).name: tols for name, tols in ADAPTIVE_TOLERANCES.items()}
    for solver in solvers:
        info = get(solver)
        if info.adaptive:
            for tol in sweeps.get(info.name, (1e-3,))[:tolerances]:
                cells.append((solver, None, {"rtol": tol, "atol": tol}))
            continue
        seen = set()
        for budget in nfes:
            if info.nfe(1) > budget:
                continue  # not even one step fits: never over the budget
            steps = info.steps_for_nfe(budget)
            if steps not in seen:
                seen.add(steps)
                cells.append((solver, budget, {"steps": steps}))
                if info.kind == "ode":
                    cells.extend((solver, budget, {"steps": steps, "tune": method}) for method in tune
                                 if method != "coefficients" or info.name in NATIVE)
    return cells


def _floors(problem: Problem, names: Sequence[str], n: int, bandwidth, seed: int, repeats: int) -> Dict[str, Dict]:
    """Each metric between independent draws of n points and the comparison set, over repeats."""
    gen = torch.Generator(device=problem.target.device).manual_seed(seed + 2)
    draws = [problem.draw(n, gen) for _ in range(repeats)]
    floors = {}
    for name in names:
        if name == "nll_gap":
            values = torch.stack([_nll(problem, x) for x in draws]) - _nll(problem, problem.target)
        else:
            values = torch.stack([_sample_metric(name, bandwidth)(x, problem.target) for x in draws])
        floors[name] = {"mean": float(values.mean()), "std": float(values.std())}
    return floors


def _nll(problem: Problem, x: torch.Tensor) -> torch.Tensor:
    """Mean -log p_{t_end}(x) in nats per dimension."""
    return -problem.log_prob(x).mean() / problem.dim


def _sample_metric(name: str, bandwidth) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name == "mmd":
        return lambda x, y: _metrics.mmd(x, y, bandwidth=bandwidth)
    return lambda x, y: _metrics.sliced_wasserstein(x, y, projections=256)


def _earlier_run(path: Path) -> dict:
    """The results file a resume continues, checked to hold what a run writes."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _checks.fail("resume", f"a readable {path.name} written by an earlier run", f"{path}: {err}") from None
    keys = ("config", "problems", "cells")
    if not isinstance(earlier, dict) or any(k not in earlier for k in keys) or not isinstance(earlier["cells"], list):
        raise _checks.fail("resume", f"a results file with {', '.join(keys)} (written by an earlier run)", str(path))
    return earlier


def run_benchmark(
    problems: Iterable[Union[str, Problem]] = QUICK["problems"],
    solvers: Optional[Iterable[str]] = None,
    nfes: Iterable[int] = DEFAULT_NFES,
    metrics: Iterable[str] = METRICS,
    n: int = 1000,
    seed: int = 0,
    device: Union[str, torch.device, None] = None,
    dtype: torch.dtype = torch.float32,
    schedule: Optional[str] = None,
    tolerances: int = 4,
    floor_repeats: int = 5,
    out: Union[str, Path, None] = None,
    resume: bool = False,
    progress: bool = False,
    digits_checkpoint: Union[str, Path, None] = None,
    optimize: bool = False,
    calibration: int = 256,
    checkpoint: Union[str, Path, None] = None,
    data: Union[str, Path, None] = None,
    tune: Sequence[str] = (),
    validation: int = 256,
    tune_options: Optional[Mapping[str, Mapping[str, object]]] = None,
    cache_dir: Union[str, Path, None] = None,
) -> Optional[dict]:
    """Run every (problem, solver, budget) cell; return the results dict on rank 0 (None on
    other ranks). With `out`, the JSON is rewritten after every cell (a long run never loses
    finished cells; `resume=True` skips the cells a matching earlier run finished), and the
    CSV, Markdown table and plot are written at the end.

    Args:
        problems: 'ring2d/vp'-style names (mixture in ANALYTIC, SDE in BENCH_SDES), 'ckpt' (the
            `checkpoint` model on data set `data`, see `checkpoint_problem`), 'digits' (the
            `checkpoint` model on the digits), or Problem objects.
        checkpoint, data: a Trainer checkpoint and a data set (a built-in name or a file;
            default digits for a (1, 8, 8) model). `digits_checkpoint` is the old name of
            `checkpoint`.
        solvers: registry names or their aliases (default: all registered); cells carry the
            registry's name.
        nfes: NFE budgets for fixed-step solvers (each runs the most steps that fit).
            tolerances: how many entries of each adaptive solver's sweep to run.
        metrics: a subset of METRICS. n: samples per cell. schedule: None for each solver's
            default, or a schedule name used for all.
        tune: tuning methods (`scoresde.tuning.METHODS`): a tuned row per method and fixed-step
            ODE solver, its sampler fitted per problem and budget by `scoresde.tune` on
            `calibration` and `validation` noises drawn from seed + 3 (never the cells' x_T),
            with teachers from the problem's reference solve and `tune_options[method]` as the
            method's options; every rank tunes the same sampler, deterministically.
        optimize: True adds "nelder-mead" to `tune` (the older name of that row).
        cache_dir: where tuning caches its teacher solves (default: a temporary folder for the
            run, single process only: under torchrun ranks could disagree on a cache hit).
    """
    start = time.perf_counter()
    if digits_checkpoint is not None:
        if checkpoint is not None and checkpoint != digits_checkpoint:
            raise _checks.fail("digits_checkpoint", "None or the same as checkpoint (its new name)", digits_checkpoint)
        checkpoint = digits_checkpoint
    solvers = list(dict.fromkeys(get(s).name for s in (available() if solvers is None else solvers)))
    metrics = list(metrics)
    for m in metrics:
        _checks.choice("metric", m, METRICS)
    nfes = sorted({_checks.integer("nfes", b, low=1) for b in nfes})
    if not nfes:
        raise _checks.fail("nfes", "at least one NFE budget", nfes)
    n = _checks.integer("n", n, low=2)
    tolerances = _checks.integer("tolerances", tolerances, low=0)
    device = torch.device(device) if device is not None else torch.device("cpu")
    shards = Shards(n)
    config = dict(n=n, seed=seed, dtype=str(dtype).replace("torch.", ""), schedule=schedule, nfes=nfes,
                  metrics=metrics, world_size=shards.world)
    tuning = _tuning_settings(tune, optimize, calibration, validation, tune_options, seed, cache_dir, shards.world)
    if tuning["methods"]:
        config["tune"] = {k: v for k, v in tuning.items() if k != "cache_dir"}
    results = dict(config=config, machine=_machine(device), problems={}, cells=[])
    json_path = Path(out) / "accuracy_vs_nfe.json" if out is not None else None
    done = set()
    if resume and json_path is not None and json_path.exists() and shards.main:
        earlier = _earlier_run(json_path)
        if {k: v for k, v in earlier["config"].items() if k != "world_size"} != \
                {k: v for k, v in config.items() if k != "world_size"}:
            raise ValueError(f"resume: {json_path} was written with another configuration ({earlier['config']})")
        results["problems"], results["cells"] = earlier["problems"], earlier["cells"]
        results["seconds"] = earlier.get("seconds", 0.0)  # the earlier run's time, added to below
        done = {_key(c) for c in results["cells"]}
    done = shards.broadcast(done)

    cells = _cells(solvers, nfes, tolerances, tuning["methods"])
    cache, scratch = tuning["cache_dir"], None
    if cache is None and tuning["methods"] and shards.world == 1:  # each teacher solved once per run
        scratch = tempfile.TemporaryDirectory(prefix="scoresde-teachers-")
        cache = scratch.name
    problem_list = list(problems)
    bar = None
    if progress and shards.main:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(problem_list) * len(cells), desc="bench cells")
    for spec in problem_list:
        problem = make_problem(spec, seed, n, device, dtype, checkpoint, data)
        todo = [c for c in cells if _key(dict(problem=problem.name, solver=c[0], requested_nfe=c[1],
                                                  tolerance=c[2].get("rtol"), schedule=_tuned_schedule(c[2])))
                not in done]
        if bar is not None:
            bar.update(len(cells) - len(todo))
        if not todo:
            continue
        gen = torch.Generator(device=device).manual_seed(seed)
        x_T = problem.model.sde.prior_sample((n, *problem.shape), gen, dtype=torch.float64, device=device)
        x_T = x_T[shards.lo: shards.hi]
        reference = None
        info_problem = results["problems"].setdefault(problem.name, {"dim": problem.dim})
        if "rmse" in metrics and any(get(c[0]).kind == "ode" for c in todo):
            ref = problem.reference(x_T)
            reference = shards.gather(ref.x).to(torch.float64)
            info_problem["reference"] = {**problem.reference_options, "nfe": ref.nfe, "seconds": ref.seconds}
        floor_metrics = [m for m in metrics if m in ("sliced_w2", "mmd") or (m == "nll_gap" and problem.log_prob)]
        bandwidth = _metrics.median_bandwidth(problem.target)
        if shards.main and floor_metrics and "floors" not in info_problem:
            info_problem["floors"] = _floors(problem, floor_metrics, n, bandwidth, seed, floor_repeats)
        for solver, budget, options in todo:
            tuned = None
            if "tune" in options:
                tuned = _tuned(problem, solver, options["steps"], options["tune"], tuning, device, cache)
            record = _run_cell(problem, solver, budget, options, x_T, seed, schedule, dtype, shards, tuned)
            if shards.main:
                if record["status"] == "ok":
                    record.update(_measure(problem, record.pop("x"), reference, metrics, bandwidth,
                                           get(solver).kind))
                results["cells"].append(record)
                if json_path is not None:
                    write_json(results, json_path)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    if scratch is not None:
        scratch.cleanup()
    results["seconds"] = time.perf_counter() - start + results.get("seconds", 0.0)
    if not shards.main:
        return None
    if out is not None:
        write_outputs(results, Path(out))
    return results


def _key(cell: dict) -> Tuple:
    return (cell["problem"], get(cell["solver"]).name, cell["requested_nfe"], cell.get("tolerance"),
            tuned_method(cell))


def _tuned_schedule(options: dict) -> Optional[str]:
    """The `schedule` a cell with these options records when tuned, else None."""
    return f"{TUNED}{options['tune']}" if "tune" in options else None


def _tuning_settings(tune, optimize, calibration, validation, options, seed, cache_dir, world) -> dict:
    """The checked tuning settings of a run (methods in order, without repeats)."""
    from ..tuning import METHODS

    if isinstance(tune, str):
        tune = [tune]
    methods = [_checks.choice("tune", m, METHODS) for m in tune]
    methods = list(dict.fromkeys([*methods, *(["nelder-mead"] if optimize else [])]))
    options = {} if options is None else options
    if not isinstance(options, Mapping) or any(m not in methods or not isinstance(o, Mapping)
                                               for m, o in options.items()):
        raise _checks.fail("tune_options", "a mapping from tuning methods of this run "
                           f"({', '.join(methods) or 'none'}) to mappings of their options", options)
    if cache_dir is not None and world > 1:
        raise _checks.fail("cache_dir", "None under torchrun (a rank could find a teacher in the cache that another "
                           "rank still solves, and the ranks' solves are collective)", str(cache_dir))
    return dict(methods=methods, calibration=_checks.integer("calibration", calibration, low=1),
                validation=_checks.integer("validation", validation, low=1), seed=seed + 3,
                options={m: dict(o) for m, o in options.items()}, cache_dir=cache_dir)


def _tuned(problem: Problem, solver: str, steps: int, method: str, tuning: dict, device, cache_dir):
    """The TunedSampler `method` fits for `solver` at `steps` steps (its NFE budget is theirs) on
    noise from seed + 3, or the reason it could not (a string). Teachers are the problem's
    reference solve; the model's own dtype (float64 for the exact oracles)."""
    from ..tuning import tune

    params = next((p for p in problem.model.parameters() if p.is_floating_point()), None)
    dtype = torch.float64 if params is None else params.dtype
    try:
        return tune(problem.model, get(solver).nfe(steps), method=method, solver=solver,
                    shape=(tuning["calibration"], *problem.shape), validation=tuning["validation"],
                    generator=torch.Generator(device=device).manual_seed(tuning["seed"]),
                    teacher_options={"options": problem.reference_options}, cache_dir=cache_dir, dtype=dtype,
                    device=device, t_end=problem.t_end, **tuning["options"].get(method, {}))
    except (NonFiniteError, ValueError, RuntimeError, ArithmeticError) as err:
        return f"tuning failed: {type(err).__name__}: {err}"


def _run_cell(problem, solver, budget, options, x_T, seed, schedule, dtype, shards, tuned=None) -> dict:
    """One cell; a tuned cell (options["tune"] its method) runs `tuned`, its TunedSampler, or
    fails with `tuned`, the reason tuning failed."""
    info = get(solver)
    kwargs = dict(options)
    steps = kwargs.pop("steps", None)
    kwargs.pop("tune", None)
    record = dict(problem=problem.name, solver=solver, kind=info.kind, requested_nfe=budget,
                  tolerance=options.get("rtol"), steps=steps, schedule=_tuned_schedule(options) or schedule,
                  status="ok", reason=None, nfe=None, seconds=None)
    if isinstance(tuned, str):
        shards.all_ok(False, x_T.device)  # every rank fails alike (tuning is deterministic)
        record.update(status="failed", reason=tuned)
        return record
    if tuned is not None:
        record["tuning"] = dict(
            method=tuned.method, solver=tuned.solver, solver_options=tuned.solver_options, start=tuned.start,
            loss_start=tuned.loss_start, loss=tuned.loss, kept_start=tuned.kept_start, cost_nfe=tuned.cost_nfe,
            cost_seconds=tuned.cost_seconds, calibration=tuned.calibration, validation=tuned.validation,
            times=tuned.times.tolist(), time_offsets=list(tuned.time_offsets),
            note="loss_start, loss: validation RMSE against the teacher of the best fixed schedule (start) and of "
                 "the tuned sampler; cost: every evaluation and second of tuning")
    x = x_T.to(dtype)
    gen = torch.Generator(device=x.device).manual_seed(seed + 1)
    if info.kind == "sde":
        if "noise_fn" in info.options and not info.adaptive:  # adaptive SDE: draws for subsets of rows
            kwargs["noise_fn"] = SharedNoise(gen, shards)
        kwargs["generator"] = gen
    try:
        if tuned is not None:  # its solver, grid and options
            out = sample(problem.model, x_T=x, solver=tuned, t_end=problem.t_end, **kwargs)
        else:
            out = sample(problem.model, x_T=x, solver=solver, steps=steps, schedule=schedule, t_end=problem.t_end,
                         **kwargs)
        ok, reason = True, None
    except (NonFiniteError, ValueError, RuntimeError, ArithmeticError) as err:
        ok, reason, out = False, f"{type(err).__name__}: {err}", None
    if not shards.all_ok(ok, x.device):
        record.update(status="failed", reason=reason or "failed on another rank")
        return record
    record.update(nfe=out.nfe, seconds=shards.max(out.seconds, x.device), x=shards.gather(out.x))
    return record


def _measure(problem, x, reference, metrics, bandwidth, kind) -> dict:
    values = {}
    x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        return dict(status="failed", reason="non-finite samples")
    if "rmse" in metrics:
        values["rmse"] = float((x - reference).square().mean().sqrt()) if kind == "ode" and reference is not None else None
    for name in ("sliced_w2", "mmd"):
        if name in metrics:
            values[name] = float(_sample_metric(name, bandwidth)(x, problem.target))
    if "nll_gap" in metrics:
        values["nll_gap"] = float(_nll(problem, x) - _nll(problem, problem.target)) if problem.log_prob else None
    return values


def _machine(device: torch.device) -> dict:
    info = dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                torch=torch.__version__, threads=torch.get_num_threads(), device=str(device))
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


