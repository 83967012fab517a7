"""Accuracy against NFE: any registered sampler on problems whose answer is known.

A *cell* is one (problem, solver, NFE budget). Every cell of a problem starts from the same
prior noise and (for SDE samplers that take a `noise` callable) the same Gaussian draws, and
records the NFE the model counted, the wall time and these metrics:

- `rmse`: terminal RMSE against a tight adaptive solve of the probability-flow ODE from the
  same noise (ODE solvers only; float64 dopri8 at 1e-10 for analytic problems);
- `sliced_w2`, `mmd`: distance to exact samples of p_{t_end} (analytic problems) or to the
  held-out test digits, next to the two-sample floor (the same metric between an independent
  exact draw and that set: a perfect sampler scores there);
- `nll_gap`: mean of -log p_{t_end}(x) over the samples minus the same mean over the exact
  samples, in nats per dimension, under the exact density (analytic problems only). Not a
  divergence: a sampler that collapses onto the modes scores below zero.

Fixed-step solvers run the step count whose NFE is nearest the budget (ties go to the cheaper
one); a cell records both `requested_nfe` and the counted `nfe`, so a budget a solver cannot
meet is never mislabeled. With `optimize=True` every fixed-step ODE cell gets a twin with
`schedule="optimized"`: the grid `scoresde.schedules.optimize` tunes for that solver and step
count on a calibration batch of prior noise (seed + 3, held out from the cells' x_T). Adaptive solvers run a tolerance sweep instead. A cell that fails
(non-finite values, a solver error) is recorded with its reason and the run goes on.

Under `torchrun` the sample batch is split across ranks (every rank draws the full batch's
noise and keeps its rows, so fixed-step results equal the single-process run); rank 0
gathers the samples, computes the metrics and writes the files. Adaptive solvers choose their
steps from an error norm over their own rows and torchsde draws its Brownian path for the
shard's shape, so their sharded results differ from one process's (as two batch sizes would).
"""
from __future__ import annotations

import csv
import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from .. import metrics as _metrics
from .._utils import check_choice
from ..model import ScoreModel
from ..solvers import available, get, sample
from ..solvers._loop import NonFiniteError

__all__ = [
    "Problem", "analytic_problem", "digits_problem", "run_benchmark", "write_outputs", "METRICS", "ANALYTIC",
    "BENCH_SDES", "DEFAULT_NFES", "QUICK", "feasible_steps", "markdown", "summary", "OPTIMIZED",
]

METRICS = ("rmse", "sliced_w2", "mmd", "nll_gap")
ANALYTIC = ("ring2d", "gmm16d", "gmm64d", "bimodal1d")
BENCH_SDES = ("vp", "ve", "edm")
DEFAULT_NFES = (3, 4, 5, 6, 8, 10, 12, 15, 20, 30, 50, 70, 100)
TABLE_NFES = (5, 10, 20, 50)
#: the `schedule` of a cell whose grid was tuned by `scoresde.schedules.optimize` (optimize=True)
OPTIMIZED = "optimized"
#: tolerance sweeps for adaptive solvers (rtol = atol), loosest first
ADAPTIVE_TOLERANCES = {"torchdiffeq": (1e-2, 1e-3, 1e-4, 1e-5), "scipy": (1e-2, 1e-3, 1e-4, 1e-5),
                       "adaptive_sde": (0.1, 0.05, 0.02, 0.01)}
#: the README's main job: two problems, representative solvers, four budgets (about a minute on 2 CPU cores)
QUICK = dict(
    problems=("ring2d/vp", "gmm16d/edm"),
    solvers=("euler", "heun", "ddim", "dpm++2m", "dpm++3m", "unipc", "ipndm", "euler_maruyama", "ancestral",
             "dpm++2m_sde", "torchdiffeq"),
    nfes=(5, 10, 20, 50),
    n=1000,
    tolerances=2,
)


@dataclass
class Problem:
    """What a benchmark needs of a problem.

    model: the ScoreModel sampled in the run's dtype; reference_model: the same in
    `reference_dtype` for the reference ODE solve (may be the same object for dtype-agnostic
    oracles).
    target: the fixed comparison set for sample metrics, (M, *shape); draw(n, generator): an
    independent draw of n points from the same distribution (for the floor).
    log_prob: exact log p_{t_end}(x), shape (B,), or None. t_end: where sampling stops.
    """

    name: str
    model: ScoreModel
    reference_model: ScoreModel
    shape: Tuple[int, ...]
    target: torch.Tensor
    draw: Callable[[int, torch.Generator], torch.Tensor]
    log_prob: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    t_end: Optional[float] = None
    reference_options: Dict[str, object] = field(default_factory=lambda: dict(method="dopri8", rtol=1e-10, atol=1e-10))
    reference_dtype: torch.dtype = torch.float64

    @property
    def dim(self) -> int:
        return math.prod(self.shape)


def analytic_problem(name: str, seed: int = 0, n: int = 1000, device=None) -> Problem:
    """'ring2d/vp' etc.: a named Gaussian mixture under a named SDE, with exact samples of
    p_{t_end} (seeded `seed + 1`) as the comparison set and its exact density."""
    from ..cli import make_sde
    from ..data.problems import get_problem

    mixture_name, _, sde_name = name.partition("/")
    check_choice("problem", mixture_name, ANALYTIC)
    check_choice("sde", sde_name, BENCH_SDES)
    sde = make_sde(sde_name)
    mixture = get_problem(mixture_name)
    t_end = sde.t_eps

    def draw(count: int, generator: torch.Generator) -> torch.Tensor:
        x0 = mixture.sample(count, generator, dtype=torch.float64, device=device)
        return sde.marginal(x0, t_end, generator=generator)

    target = draw(n, torch.Generator(device=device or "cpu").manual_seed(seed + 1))
    model = mixture.score_model(sde)
    return Problem(name, model, model, tuple(mixture.event_shape), target, draw,
                   lambda x: mixture.log_prob_t(x, t_end, sde), t_end)


def digits_problem(checkpoint: Union[str, Path], device=None, dtype: torch.dtype = torch.float32,
                   weights: str = "ema") -> Problem:
    """A trained digits model from a Trainer checkpoint; its samples are compared with the
    297 held-out test digits and the floor is a random subset of the training split against
    them. The reference is a float32 dopri5 solve at rtol = atol = 1e-5: float64 convolutions
    cost ~8x more on a CPU (a 1e-7 float64 solve of 200 images took 7 minutes here), and the
    errors it measures are above 1e-3."""
    from ..data.digits import load_digits
    from ..training import _build_model, load_checkpoint

    state = load_checkpoint(checkpoint)
    models = []
    for d in (dtype, torch.float32):
        model = _build_model(state["config"]["model"])
        model.load_state_dict(state[weights])
        models.append(model.to(device=device, dtype=d).eval())
    train, _ = load_digits("train", dtype=torch.float64, device=device)
    test, _ = load_digits("test", dtype=torch.float64, device=device)

    def draw(count: int, generator: torch.Generator) -> torch.Tensor:
        if count > len(train):
            raise ValueError(f"n={count} exceeds the {len(train)} training digits used for the floor")
        return train[torch.randperm(len(train), generator=generator, device=generator.device)[:count]]

    return Problem("digits", models[0], models[1], tuple(test.shape[1:]), test, draw,
                   reference_options=dict(method="dopri5", rtol=1e-5, atol=1e-5), reference_dtype=torch.float32)


def feasible_steps(solver: str, budget: int) -> int:
    """The step count whose evaluations are nearest `budget` (ties: the cheaper), at least 1."""
    info = get(solver)
    per, extra = int(info.evals_per_step), info.extra_evals
    low = max((budget - extra) // per, 1)
    candidates = (low, low + 1)
    return min(candidates, key=lambda s: (abs(s * per + extra - budget), s))


# ---- distribution across torchrun ranks ---------------------------------------------------
class _Ranks:
    """Rows of the batch this process samples, and the collectives to put the batch together."""

    def __init__(self, n: int):
        dist = torch.distributed
        self.on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1
        self.n = n
        bounds = [n * r // self.world for r in range(self.world + 1)]
        self.lo, self.hi = bounds[self.rank], bounds[self.rank + 1]
        self.sizes = [hi - lo for lo, hi in zip(bounds, bounds[1:])]  # rows of each rank

    @property
    def main(self) -> bool:
        return self.rank == 0

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """The full batch (rank order) on every rank."""
        if not self.on:
            return x
        padded = torch.zeros((max(self.sizes), *x.shape[1:]), dtype=x.dtype, device=x.device)
        padded[: len(x)] = x
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        torch.distributed.all_gather(parts, padded)
        return torch.cat([p[:s] for p, s in zip(parts, self.sizes)])

    def all_ok(self, ok: bool, device) -> bool:
        if not self.on:
            return ok
        flag = torch.tensor([1.0 if ok else 0.0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item())

    def max(self, value: float, device) -> float:
        if not self.on:
            return value
        v = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(v, op=torch.distributed.ReduceOp.MAX)
        return float(v.item())

    def broadcast(self, obj):
        if not self.on:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


class _SharedNoise:
    """N(0, I) draws for the full batch from one generator, of which this rank keeps its rows:
    an SDE sampler then sees exactly the noise it would see in a single-process run."""

    def __init__(self, generator: torch.Generator, ranks: _Ranks):
        self.generator, self.ranks = generator, ranks

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        full = torch.randn((self.ranks.n, *like.shape[1:]), generator=self.generator, dtype=like.dtype,
                           device=like.device)
        return full[self.ranks.lo: self.ranks.hi]


# ---- the run ------------------------------------------------------------------------------
def _cells(solvers: Sequence[str], nfes: Sequence[int], tolerances: int,
           optimize: bool = False) -> List[Tuple[str, Optional[int], Dict]]:
    """(solver, requested NFE or None, options) in run order; budgets that land on a step
    count already listed for that solver are run once; with `optimize`, each fixed-step ODE
    cell is followed by its optimized-schedule twin (options["schedule"] = OPTIMIZED)."""
    cells = []
    for solver in solvers:
        info = get(solver)
        if info.evals_per_step == "adaptive":
            for tol in ADAPTIVE_TOLERANCES.get(solver, (1e-3,))[:tolerances]:
                cells.append((solver, None, {"rtol": tol, "atol": tol}))
            continue
        seen = set()
        for budget in nfes:
            steps = feasible_steps(solver, budget)
            if steps not in seen:
                seen.add(steps)
                cells.append((solver, budget, {"steps": steps}))
                if optimize and info.kind == "ode":
                    cells.append((solver, budget, {"steps": steps, "schedule": OPTIMIZED}))
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
) -> Optional[dict]:
    """Run every (problem, solver, budget) cell; return the results dict on rank 0 (None on
    other ranks). With `out`, the JSON is rewritten after every cell (a long run never loses
    finished cells; `resume=True` skips the cells a matching earlier run finished), and the
    CSV, Markdown table and plot are written at the end.

    Args:
        problems: 'ring2d/vp'-style names (mixture in ANALYTIC, SDE in BENCH_SDES), 'digits'
            (needs `digits_checkpoint`), or Problem objects.
        solvers: registry names (default: all registered).
        nfes: NFE budgets for fixed-step solvers. tolerances: how many entries of each adaptive
            solver's sweep to run.
        metrics: a subset of METRICS. n: samples per cell. schedule: None for each solver's
            default, or a schedule name used for all.
        optimize: add an optimized-schedule row per fixed-step ODE solver (its grid tuned by
            `scoresde.schedules.optimize` on `calibration` samples of held-out noise; every rank
            tunes the same grid, deterministically).
    """
    start = time.perf_counter()
    solvers = list(available() if solvers is None else solvers)
    for s in solvers:
        get(s)  # unknown names list the valid ones
    metrics = list(metrics)
    for m in metrics:
        check_choice("metric", m, METRICS)
    nfes = sorted({int(b) for b in nfes})
    if not nfes or nfes[0] < 1:
        raise ValueError(f"nfes must be positive integers; got {nfes}")
    if n < 2:
        raise ValueError(f"n must be >= 2; got {n}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    ranks = _Ranks(n)
    config = dict(n=n, seed=seed, dtype=str(dtype).replace("torch.", ""), schedule=schedule, nfes=nfes,
                  metrics=metrics, world_size=ranks.world)
    if optimize:
        config["optimize"] = dict(calibration=calibration, seed=seed + 3)
    results = dict(config=config, machine=_machine(device), problems={}, cells=[])
    json_path = Path(out) / "accuracy_vs_nfe.json" if out is not None else None
    done = set()
    if resume and json_path is not None and json_path.exists() and ranks.main:
        earlier = json.loads(json_path.read_text())
        if {k: v for k, v in earlier["config"].items() if k != "world_size"} != \
                {k: v for k, v in config.items() if k != "world_size"}:
            raise ValueError(f"resume: {json_path} was written with another configuration ({earlier['config']})")
        results["problems"], results["cells"] = earlier["problems"], earlier["cells"]
        results["seconds"] = earlier.get("seconds", 0.0)  # the earlier run's time, added to below
        done = {_key(c) for c in results["cells"]}
    done = ranks.broadcast(done)

    cells = _cells(solvers, nfes, tolerances, optimize)
    problem_list = list(problems)
    bar = None
    if progress and ranks.main:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(problem_list) * len(cells), desc="bench cells")
    for spec in problem_list:
        problem = _make_problem(spec, seed, n, device, dtype, digits_checkpoint)
        todo = [c for c in cells if _key(dict(problem=problem.name, solver=c[0], requested_nfe=c[1],
                                                  tolerance=c[2].get("rtol"), schedule=c[2].get("schedule"))) not in done]
        if bar is not None:
            bar.update(len(cells) - len(todo))
        if not todo:
            continue
        gen = torch.Generator(device=device).manual_seed(seed)
        x_T = problem.model.sde.prior_sample((n, *problem.shape), gen, dtype=torch.float64, device=device)
        x_T = x_T[ranks.lo: ranks.hi]
        reference = None
        info_problem = results["problems"].setdefault(problem.name, {"dim": problem.dim})
        if "rmse" in metrics and any(get(c[0]).kind == "ode" for c in todo):
            ref = sample(problem.reference_model, x_T=x_T.to(problem.reference_dtype), solver="torchdiffeq", t_end=problem.t_end,
                         **problem.reference_options)
            reference = ranks.gather(ref.x).to(torch.float64)
            info_problem["reference"] = {**problem.reference_options, "nfe": ref.nfe, "seconds": ref.seconds}
        floor_metrics = [m for m in metrics if m in ("sliced_w2", "mmd") or (m == "nll_gap" and problem.log_prob)]
        bandwidth = _metrics.median_bandwidth(problem.target)
        if ranks.main and floor_metrics and "floors" not in info_problem:
            info_problem["floors"] = _floors(problem, floor_metrics, n, bandwidth, seed, floor_repeats)
        tuning = None
        for solver, budget, options in todo:
            if options.get("schedule") == OPTIMIZED:
                tuning = tuning or _calibration(problem, calibration, seed, device, dtype)
                options = {**options, "schedule": _optimized(problem, solver, options["steps"], *tuning)}
            record = _run_cell(problem, solver, budget, options, x_T, seed, schedule, dtype, ranks)
            if ranks.main:
                if record["status"] == "ok":
                    record.update(_measure(problem, record.pop("x"), reference, metrics, bandwidth,
                                           get(solver).kind))
                results["cells"].append(record)
                if json_path is not None:
                    _write_json(results, json_path)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    results["seconds"] = time.perf_counter() - start + results.get("seconds", 0.0)
    if not ranks.main:
        return None
    if out is not None:
        write_outputs(results, Path(out))
    return results


def _make_problem(spec, seed, n, device, dtype, digits_checkpoint) -> Problem:
    if isinstance(spec, Problem):
        return spec
    if spec == "digits":
        if digits_checkpoint is None:
            raise ValueError("problem 'digits' needs a trained model: give digits_checkpoint (--digits-ckpt), "
                             "e.g. the one benchmarks/digits_quality.py writes")
        return digits_problem(digits_checkpoint, device=device, dtype=dtype)
    if "/" not in str(spec):
        raise ValueError(f"problem {spec!r} is not valid; give '<mixture>/<sde>' with mixture one of "
                         f"{', '.join(ANALYTIC)} and sde one of {', '.join(BENCH_SDES)}, or 'digits'")
    return analytic_problem(spec, seed=seed, n=n, device=device)


def _key(cell: dict) -> Tuple:
    return (cell["problem"], cell["solver"], cell["requested_nfe"], cell.get("tolerance"),
            cell.get("schedule") == OPTIMIZED)


def _calibration(problem: Problem, n: int, seed: int, device, dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """Calibration noise for optimized schedules (seed + 3, so not the cells' x_T), in the run's
    dtype, and its reference solve."""
    gen = torch.Generator(device=device).manual_seed(seed + 3)
    x_cal = problem.model.sde.prior_sample((n, *problem.shape), gen, dtype=torch.float64, device=device)
    ref = sample(problem.reference_model, x_T=x_cal.to(problem.reference_dtype), solver="torchdiffeq",
                 t_end=problem.t_end, **problem.reference_options)
    return x_cal.to(dtype), ref.x


def _optimized(problem: Problem, solver: str, steps: int, x_cal: torch.Tensor, reference: torch.Tensor):
    """The OptimizedSchedule for `solver` at `steps` steps (its NFE budget is theirs)."""
    from ..schedules import optimize

    info = get(solver)
    return optimize(problem.model, None, solver, steps * int(info.evals_per_step) + info.extra_evals,
                    calibration=x_cal, reference=reference, t_end=problem.t_end)


def _run_cell(problem, solver, budget, options, x_T, seed, schedule, dtype, ranks) -> dict:
    info = get(solver)
    kwargs = dict(options)
    steps = kwargs.pop("steps", None)
    tuned = kwargs.pop("schedule", None)  # the OptimizedSchedule of an optimized cell
    record = dict(problem=problem.name, solver=solver, kind=info.kind, requested_nfe=budget,
                  tolerance=options.get("rtol"), steps=steps, schedule=OPTIMIZED if tuned else schedule,
                  status="ok", reason=None, nfe=None, seconds=None)
    if tuned:
        record["optimization"] = dict(start=tuned.start, cost_nfe=tuned.cost_nfe, calibration=tuned.calibration,
                                      calibration_rmse=[tuned.loss_start, tuned.loss], times=tuned.times.tolist())
    x = x_T.to(dtype)
    gen = torch.Generator(device=x.device).manual_seed(seed + 1)
    if info.kind == "sde":
        if "noise" in info.options and info.evals_per_step != "adaptive":  # adaptive_sde draws for subsets of rows
            kwargs["noise"] = _SharedNoise(gen, ranks)
        kwargs["generator"] = gen
    try:
        out = sample(problem.model, x_T=x, solver=solver, steps=None if tuned else steps, schedule=tuned or schedule,
                     t_end=problem.t_end, **kwargs)
        ok, reason = True, None
    except (NonFiniteError, ValueError, RuntimeError, ArithmeticError) as err:
        ok, reason, out = False, f"{type(err).__name__}: {err}", None
    if not ranks.all_ok(ok, x.device):
        record.update(status="failed", reason=reason or "failed on another rank")
        return record
    record.update(nfe=out.nfe, seconds=ranks.max(out.seconds, x.device), x=ranks.gather(out.x))
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


# ---- outputs ------------------------------------------------------------------------------
def _write_json(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)  # atomic: an interrupted run leaves the previous complete file


CSV_COLUMNS = ("problem", "solver", "kind", "schedule", "requested_nfe", "tolerance", "steps", "nfe", "seconds",
               "status", "reason") + METRICS


def write_outputs(results: dict, out: Path) -> None:
    """accuracy_vs_nfe.json, .csv, .md, .png (RMSE) and _sliced_w2.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    _write_json(results, out / "accuracy_vs_nfe.json")
    with open(out / "accuracy_vs_nfe.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results["cells"])
    (out / "accuracy_vs_nfe.md").write_text(markdown(results))
    try:
        plot(results, out / "accuracy_vs_nfe.png", "rmse")
        plot(results, out / "accuracy_vs_nfe_sliced_w2.png", "sliced_w2")
    except ImportError:
        print("accuracy_vs_nfe.png not drawn: matplotlib is missing (pip install 'scoresde[plot]')")


def _rows(cells: List[dict], solvers: Sequence[str]) -> List[Tuple[str, bool]]:
    """Table rows (solver, optimized?): each solver, then its optimized-schedule row if it has one."""
    tuned = {c["solver"] for c in cells if c.get("schedule") == OPTIMIZED}
    return [(s, opt) for s in solvers for opt in (False, True) if not opt or s in tuned]


def _label(solver: str, optimized: bool) -> str:
    return f"{solver} ({OPTIMIZED})" if optimized else solver


def _cell_at(cells: List[dict], solver: str, budget: int, optimized: bool = False) -> Optional[dict]:
    """The cell that ran `budget` for a fixed-step solver: the one with its step count (a budget
    that fell on a step count already run shares that cell)."""
    steps = feasible_steps(solver, budget)
    return next((c for c in cells if c["solver"] == solver and c["steps"] == steps and c["requested_nfe"] is not None
                 and (c.get("schedule") == OPTIMIZED) == optimized), None)


def _fmt(cell: Optional[dict], metric: str, budget: Optional[int]) -> str:
    if cell is None:
        return "-"
    if cell["status"] != "ok":
        return "failed"
    value = cell.get(metric)
    if value is None:
        return "-"
    text = f"{value:.2e}" if metric in ("rmse", "mmd") else f"{value:.4f}"
    return text if budget is None or cell["nfe"] == budget else f"{text} ({cell['nfe']})"


def markdown(results: dict, budgets: Sequence[int] = TABLE_NFES) -> str:
    """Per problem and metric: a solver x NFE table (a value whose counted NFE differs from the
    column's budget shows that NFE in brackets), and the adaptive solvers' sweeps."""
    cfg = results["config"]
    lines = [f"# Accuracy vs NFE\n\nn={cfg['n']} samples per cell, seed {cfg['seed']}, {cfg['dtype']}, "
             f"{cfg['world_size']} process(es), {results['machine'].get('gpu', results['machine']['processor'])}, "
             f"{results.get('seconds', 0):.0f} s.\n"]
    budgets = [b for b in budgets if b in cfg["nfes"]]
    if len(results["problems"]) > 1:
        lines.append(summary(results, budgets))
    for name, info in results["problems"].items():
        cells = [c for c in results["cells"] if c["problem"] == name]
        lines.append(f"\n## {name} (dim {info['dim']})\n")
        for metric in cfg["metrics"]:
            rows = [s for s in dict.fromkeys(c["solver"] for c in cells)
                    if metric != "rmse" or get(s).kind == "ode"]
            fixed = [s for s in rows if get(s).evals_per_step != "adaptive"]
            if not fixed or all(c.get(metric) is None for c in cells):
                continue
            floor = info.get("floors", {}).get(metric)
            note = f"; two-sample floor {floor['mean']:.4g} +- {floor['std']:.2g}" if floor else ""
            lines.append(f"\n{metric}{note}\n")
            lines.append("| solver | " + " | ".join(f"NFE {b}" for b in budgets) + " |")
            lines.append("|---|" + "---|" * len(budgets))
            for s, opt in _rows(cells, fixed):
                lines.append(f"| {_label(s, opt)} | "
                             + " | ".join(_fmt(_cell_at(cells, s, b, opt), metric, b) for b in budgets) + " |")
        adaptive = [c for c in cells if c["requested_nfe"] is None]
        if adaptive:
            lines.append("\nadaptive solvers (tolerance: NFE, " + ", ".join(cfg["metrics"]) + ")\n")
            for c in adaptive:
                vals = ", ".join(_fmt(c, m, None) for m in cfg["metrics"])
                lines.append(f"- {c['solver']} tol {c['tolerance']:g}: "
                             + (f"{c['nfe']} NFE, {vals}" if c["status"] == "ok" else f"failed ({c['reason']})"))
        failed = [c for c in cells if c["status"] != "ok" and c["requested_nfe"] is not None]
        for c in failed:
            lines.append(f"- failed: {c['solver']} at NFE {c['requested_nfe']}: {c['reason']}")
    return "\n".join(lines) + "\n"


def summary(results: dict, budgets: Sequence[int] = TABLE_NFES) -> str:
    """Over all problems, per fixed-step solver and budget: the geometric mean of the terminal
    RMSE (ODE solvers; '-' unless every problem has a finished cell) and how many problems'
    sliced W2 lies within two floor standard deviations of the floor mean."""
    problems = results["problems"]
    solvers = [s for s in dict.fromkeys(c["solver"] for c in results["cells"]) if get(s).evals_per_step != "adaptive"]
    lines = [f"\n## Summary over {len(problems)} problems\n",
             "geometric mean of RMSE (ODE solvers) / problems with sliced W2 within 2 std of the floor\n",
             "| solver | " + " | ".join(f"NFE {b}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for solver, opt in _rows(results["cells"], solvers):
        row = []
        for b in budgets:
            cells = [_cell_at([c for c in results["cells"] if c["problem"] == name], solver, b, opt) for name in problems]
            rmse = [c["rmse"] for c in cells if c is not None and c["status"] == "ok" and c.get("rmse")]
            mean = f"{math.exp(sum(map(math.log, rmse)) / len(rmse)):.2e}" if len(rmse) == len(problems) else "-"
            near = sum(1 for c, name in zip(cells, problems) if c is not None and c.get("sliced_w2") is not None
                       and c["sliced_w2"] <= problems[name]["floors"]["sliced_w2"]["mean"]
                       + 2 * problems[name]["floors"]["sliced_w2"]["std"])
            row.append(f"{mean} / {near}" if get(solver).kind == "ode" else f"{near}")
        lines.append(f"| {_label(solver, opt)} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path, metric: str = "rmse", columns: int = 3) -> None:
    """Log-log `metric` vs counted NFE, one line per solver (SDE solvers dashed), one panel per
    problem; sample metrics draw the two-sample floor (mean +- std) as a grey band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = list(results["problems"])
    if metric not in results["config"]["metrics"] or not problems:
        return
    cols = min(columns, len(problems))
    rows = math.ceil(len(problems) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.7 * rows + 1.2), squeeze=False)
    solvers = list(dict.fromkeys(c["solver"] for c in results["cells"]))
    colors = dict(zip(solvers, plt.get_cmap("tab20").colors * 3))
    markers = dict(zip(solvers, "osD^v<>ph*" * 4))
    for ax, name in zip(axes.flat, problems):
        cells = [c for c in results["cells"] if c["problem"] == name and c["status"] == "ok"
                 and c.get("schedule") != OPTIMIZED]  # the Markdown tables carry the optimized rows
        for s in solvers:
            pts = sorted((c["nfe"], c[metric]) for c in cells if c["solver"] == s and c.get(metric))
            if pts:
                ax.loglog(*zip(*pts), ls="--" if get(s).kind == "sde" else "-", marker=markers[s], ms=3, lw=1,
                          color=colors[s], label=s)
        floor = results["problems"][name].get("floors", {}).get(metric)
        if floor:
            ax.axhspan(max(floor["mean"] - floor["std"], 1e-12), floor["mean"] + floor["std"], color="grey",
                       alpha=0.3, label="two-sample floor")
        ax.set_title(name, fontsize=10)
        ax.set(xlabel="NFE (counted)", ylabel=metric)
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([2, 3, 5, 10, 20, 50, 100, 200, 500, 1000]))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(problems):]:
        ax.set_visible(False)
    handles = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(8, len(handles)), fontsize=7)
    fig.tight_layout(rect=(0, 1.0 / (3.7 * rows + 1.2) * min(4, math.ceil(len(handles) / 8)) * 0.3, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
