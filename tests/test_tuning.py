"""scoresde.tune: GITS' dynamic programme finds the exact optimum, its grid beats every fixed
schedule on held-out noise, results are reproducible and survive JSON; teachers are the
reference solve, cached exactly and recomputed when damaged; bad input is refused up front."""
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde import schedules, tuning
from scoresde.data.problems import get_problem
from scoresde.solvers import reference_solve
from scoresde.tuning.gits import path_cost, shortest_path, step_costs

SOLVER = "dpm++2m"


def _brute_force(cost: np.ndarray, steps: int, coeff: float):
    m = len(cost)
    paths = ([0, *inner, m - 1] for inner in itertools.combinations(range(1, m - 1), steps - 1))
    return min(path_cost(cost, p, coeff) for p in paths)


@pytest.mark.parametrize("coeff", [1.0, 1.3, 0.7])
def test_dynamic_programme_finds_the_exact_optimum(coeff):
    rng = np.random.default_rng(0)
    for trial in range(20):
        m = 8
        cost = rng.exponential(size=(m, m)) * rng.uniform(0.1, 3.0, size=(m, 1))
        for steps in range(1, m):
            path = shortest_path(cost, steps, coeff)
            assert len(path) == steps + 1 and path[0] == 0 and path[-1] == m - 1
            assert all(a < b for a, b in zip(path, path[1:]))
            assert path_cost(cost, path, coeff) == pytest.approx(_brute_force(cost, steps, coeff), rel=1e-12)


@pytest.fixture(scope="module")
def ring():
    sde = sd.VPSDE()
    model = get_problem("ring2d").score_model(sde)
    held = sde.prior_sample((1000, 2), generator=torch.Generator().manual_seed(12345), dtype=torch.float64)
    return sde, model, held, reference_solve(model, held).x


def _held_rmse(model, held, reference, solver, ts) -> float:
    x = sd.sample(model, x_T=held, solver=solver, schedule=ts).x
    return float((x - reference).square().mean().sqrt())


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("teachers")


@pytest.mark.parametrize("nfe, ratio", [(5, 0.95), (10, 0.7)])
def test_gits_beats_every_fixed_schedule_on_held_out_noise(ring, cache, nfe, ratio):
    sde, model, held, reference = ring
    tuned = sd.tune(model, nfe, "gits", SOLVER, shape=(256, 2), validation=256, cache_dir=cache,
                    generator=torch.Generator().manual_seed(0))
    fixed = {name: _held_rmse(model, held, reference, SOLVER, schedules.get_schedule(name, sde, nfe))
             for name in schedules.SCHEDULES}
    gits = _held_rmse(model, held, reference, SOLVER, tuned)
    # measured on these seeds: 0.85x (5 NFE) and 0.55x (10 NFE) the best fixed (quadratic)
    assert not tuned.kept_start and gits < ratio * min(fixed.values()), (gits, fixed, tuned.details)
    assert tuned.loss < tuned.loss_start and tuned.steps == nfe and tuned.solver == SOLVER
    assert float(tuned.times[0]) == sde.T and float(tuned.times[-1]) == sde.t_eps
    assert tuned.details["solver"] == SOLVER and tuned.cost_nfe > 0
    out = tuned.sample(model, x_T=held[:8])
    assert out.nfe == nfe and torch.equal(out.times, tuned.times)


def _small(model, cache, seed=0):
    return sd.tune(model, 5, "gits", SOLVER, shape=(32, 2), validation=32, candidates=30, cache_dir=cache,
                   generator=torch.Generator().manual_seed(seed))


def test_same_seed_same_sampler_and_a_json_round_trip(ring, cache, tmp_path):
    sde, model, _, _ = ring
    a, b = _small(model, cache), _small(model, cache)  # b's teachers are a's, read back from the cache
    assert torch.equal(a.times, b.times) and a.loss == b.loss and a.loss_start == b.loss_start
    assert a.loss_history == b.loss_history and a.details == b.details and b.cost_nfe <= a.cost_nfe
    a.save(tmp_path / "t.json")
    c = sd.TunedSampler.load(tmp_path / "t.json")
    assert torch.equal(c.times, a.times) and c.times.dtype == torch.float64
    assert {k: v for k, v in c.to_dict().items() if k != "times"} == \
        {k: v for k, v in json.loads(json.dumps(a.to_dict())).items() if k != "times"}
    assert torch.equal(c.grid(sde, SOLVER, 5), a.times)
    c.check(model)


def test_refuses_another_sde_solver_steps_or_model(ring, cache):
    sde, model, _, _ = ring
    tuned = _small(model, cache)
    with pytest.raises(ValueError, match="sde must be the SDE this sampler was tuned for"):
        tuned.grid(sd.VPSDE(beta_max=19.0))
    with pytest.raises(ValueError, match="solver must be 'dpm\\+\\+2m'"):
        tuned.grid(sde, "ipndm")
    with pytest.raises(ValueError, match="steps must be None or this tuned sampler's 5"):
        tuned.grid(sde, SOLVER, 4)
    with pytest.raises(ValueError, match="steps must be None or this tuned sampler's 5"):
        sd.sample(model, x_T=torch.zeros(2, 2, dtype=torch.float64), solver=SOLVER, steps=6, schedule=tuned)
    other = get_problem("ring2d").score_model(sde)  # the same mixture: the same fingerprint
    tuned.check(other)
    shifted = sd.data.GaussianMixture.ring(modes=8, radius=1.6).score_model(sde)
    with pytest.raises(ValueError, match=f"tuned to \\(fingerprint {tuned.model_fingerprint}\\); got a model "
                                         f"with fingerprint {tuning.model_fingerprint(shifted)}"):
        tuned.check(shifted)
    with pytest.raises(ValueError, match="tuned to"):
        tuned.sample(shifted, shape=(4, 2))


def test_network_fingerprint_follows_its_parameters():
    sde = sd.VPSDE()
    torch.manual_seed(0)
    net = sd.nets.MLP(dim=2)
    a = tuning.model_fingerprint(sd.ScoreModel(net, sde))
    assert a == tuning.model_fingerprint(sd.ScoreModel(net, sde))
    with torch.no_grad():
        next(net.parameters())[0].add_(1e-6)
    assert tuning.model_fingerprint(sd.ScoreModel(net, sde)) != a
    assert tuning.model_fingerprint(sd.ScoreModel(net, sd.EDMSDE())) != a


def test_files_of_another_kind_and_old_schedule_files(ring, tmp_path):
    sde, model, _, _ = ring
    (tmp_path / "other.json").write_text(json.dumps({"format": "something.else", "version": 1}))
    with pytest.raises(ValueError, match="is not a tuned sampler file of version 1: format 'something.else'"):
        sd.TunedSampler.load(tmp_path / "other.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="is not a tuned sampler file: it holds a JSON list"):
        sd.TunedSampler.load(tmp_path / "list.json")
    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    old = tuning.optimize(model, sde, SOLVER, 3, x_T=x_T, max_evals=6)
    old.save(tmp_path / "old.json")
    loaded = sd.TunedSampler.load(tmp_path / "old.json")
    assert loaded.method == "nelder-mead" and torch.equal(loaded.times, old.times) and loaded.model_fingerprint == ""
    assert torch.equal(tuning.OptimizedSchedule.load(tmp_path / "old.json").times, old.times)
    assert sd.sample(model, x_T=x_T, solver=SOLVER, schedule=loaded).nfe == 3


def test_nelder_mead_is_optimize_validated(ring):
    sde, model, _, _ = ring
    tuned = sd.tune(model, 3, "nelder-mead", SOLVER, shape=(16, 2), validation=32, max_evals=8,
                    generator=torch.Generator().manual_seed(1))
    assert tuned.method == "nelder-mead" and tuned.steps == 3 and tuned.validation == 32
    assert tuned.loss <= tuned.loss_start == min(tuned.details["fixed_validation"].values())
    if tuned.kept_start:
        assert torch.equal(tuned.times, schedules.get_schedule(tuned.start, sde, 3))


def test_teacher_is_the_reference_solve_at_every_output_time(ring):
    sde, model, _, _ = ring
    x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    times = schedules.logsnr(sde, 6)
    out = tuning.teacher(model, x_T, times, batch_size=4)
    assert out.states.shape == (7, 8, 2) and torch.equal(out.states[0], x_T) and out.nfe > 0
    reference = reference_solve(model, x_T).x
    torch.testing.assert_close(out.states[-1], reference, rtol=0, atol=1e-8)
    torch.testing.assert_close(out.states[2], reference_solve(model, x_T, float(times[2])).x, rtol=0, atol=1e-8)
    assert torch.equal(tuning.teacher(model, x_T).x, reference)  # no output times: exactly the reference


def test_a_networks_teacher_keeps_no_graph():
    """A network's parameters require grad: the teacher's solve at many output times must not
    record it (on the digits U-Net, 128 rows at 100 times kept 17 GB)."""
    sde = sd.VPSDE()
    torch.manual_seed(0)
    model = sd.ScoreModel(sd.nets.MLP(dim=2), sde)
    x_T = sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(1))
    out = tuning.teacher(model, x_T, schedules.logsnr(sde, 5), options=dict(method="dopri5", rtol=1e-3, atol=1e-3))
    assert not out.states.requires_grad and out.states.grad_fn is None


def test_teacher_cache_hit_is_exact_and_free_and_damage_is_recomputed(ring, tmp_path):
    sde, model, _, _ = ring
    x_T = sde.prior_sample((6, 2), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    times = schedules.logsnr(sde, 4)
    first = tuning.teacher(model, x_T, times, cache_dir=tmp_path)
    before = model.nfe
    hit = tuning.teacher(model, x_T, times, cache_dir=tmp_path)
    assert hit.cached and hit.nfe == 0 and model.nfe == before and torch.equal(hit.states, first.states)
    (file,) = tmp_path.glob("teacher-*.safetensors")
    data = bytearray(file.read_bytes())
    data[-5] ^= 0xFF  # a flipped byte inside the tensor
    file.write_bytes(bytes(data))
    again = tuning.teacher(model, x_T, times, cache_dir=tmp_path)
    assert not again.cached and again.nfe > 0 and torch.equal(again.states, first.states)
    file.write_bytes(b"not a safetensors file")
    assert not tuning.teacher(model, x_T, times, cache_dir=tmp_path).cached
    assert tuning.teacher(model, x_T, times, cache_dir=tmp_path).cached  # rewritten
    other = tuning.teacher(model, x_T + 1e-3, times, cache_dir=tmp_path)  # other noise: another entry
    assert not other.cached and len(list(tmp_path.glob("teacher-*.safetensors"))) == 2


def test_ddim_step_costs_are_ddim_steps(ring):
    sde, model, _, _ = ring
    x_T = sde.prior_sample((5, 2), generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    times = schedules.logsnr(sde, 5)
    states = tuning.teacher(model, x_T, times).states
    cost = step_costs(model, states, times)
    for i, j in [(0, 1), (0, 5), (2, 4)]:
        x = sd.sample(model, x_T=states[i], solver="ddim", schedule=times[[i, j]]).x
        assert float(cost[i, j]) == pytest.approx(float((x - states[j]).square().mean()), rel=1e-10)
    assert bool(torch.isinf(cost[torch.tril_indices(6, 6)[0], torch.tril_indices(6, 6)[1]]).all())
    heun_like = step_costs(model, states, times, cost_solver="dpm-solver-2")
    x = sd.sample(model, x_T=states[1], solver="dpm-solver-2", schedule=times[[1, 4]]).x
    assert float(heun_like[1, 4]) == pytest.approx(float((x - states[4]).square().mean()), rel=1e-10)


def test_bad_input_is_refused_before_any_work(ring):
    sde, model, _, _ = ring
    before = model.nfe
    with pytest.raises(ValueError, match="method must be one of: gits, nelder-mead, steps, coefficients; got 'bogus'"):
        sd.tune(model, 5, "bogus", shape=(8, 2))
    with pytest.raises(ValueError, match="nfe must be an integer >= 1"):
        sd.tune(model, 0, shape=(8, 2))
    with pytest.raises(ValueError, match="nfe must be an integer >= 2"):
        sd.tune(model, 1, solver="dpm-solver-2", shape=(8, 2))
    with pytest.raises(ValueError, match="shape\\[0\\] must be an integer >= 1"):
        sd.tune(model, 5, shape=(0, 2))
    with pytest.raises(ValueError, match="validation must be an integer >= 1"):
        sd.tune(model, 5, shape=(8, 2), validation=0)
    with pytest.raises(ValueError, match="validation must be a count >= 1 or a noise tensor \\(V, 2\\)"):
        sd.tune(model, 5, shape=(8, 2), validation=torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="x_T must be a real floating-point tensor"):
        sd.tune(model, 5, x_T=torch.zeros(0, 2))
    with pytest.raises(ValueError, match="exactly one of shape"):
        sd.tune(model, 5)
    with pytest.raises(ValueError, match="solver must be a fixed-step ODE solver"):
        sd.tune(model, 5, solver="euler-maruyama", shape=(8, 2))
    with pytest.raises(ValueError, match="calibration batch size must be >= 16 for method 'nelder-mead'"):
        sd.tune(model, 5, "nelder-mead", shape=(8, 2))
    with pytest.raises(ValueError, match="method options must be those of method 'gits'"):
        sd.tune(model, 5, shape=(8, 2), max_evals=3)
    with pytest.raises(ValueError, match="candidates must be more than the 10 steps"):
        sd.tune(model, 10, shape=(8, 2), candidates=10)

    class DoubleWell(sd.SDE):
        def drift(self, x, t):
            return x - x**3

        def diffusion(self, x, t):
            return torch.full_like(x, 0.5)

    general = sd.ScoreModel(lambda x, t: -x, DoubleWell(), prediction="score")
    with pytest.raises(ValueError, match="method='gits' with cost_solver='ddim' .*needs an affine SDE"):
        sd.tune(general, 5, solver="euler", shape=(8, 1))
    assert model.nfe == before


def test_a_tuned_sampler_runs_as_the_solver_of_sample_and_refuses_what_it_was_not_tuned_for():
    sde = sd.VPSDE()
    mixture = sd.data.GaussianMixture.ring()
    model = mixture.score_model(sde)
    tuned = sd.tune(model, 6, method="gits", solver="dpm++2m", shape=(64, 2), validation=64,
                    generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = sd.sample(model, x_T=x_T, solver=tuned)
    same = sd.sample(model, x_T=x_T, solver=tuned.solver, schedule=tuned, **tuned.solver_options)
    assert torch.equal(out.x, same.x) and out.nfe == tuned.nfe
    other = sd.data.GaussianMixture.ring(modes=4).score_model(sde)
    with pytest.raises(ValueError, match="model must be the one this sampler was tuned to"):
        sd.sample(other, x_T=x_T, solver=tuned)
    with pytest.raises(ValueError, match="schedule must be None with a tuned sampler"):
        sd.sample(model, x_T=x_T, solver=tuned, schedule="logsnr")
    with pytest.raises(ValueError, match="solver must be a registered solver name or a tuned sampler"):
        sd.sample(model, x_T=x_T, solver=3)


def test_teachers_shard_under_torchrun_and_a_cache_hit_on_one_rank_only_solves_again(ring, tmp_path):
    """Two gloo ranks each solve their rows and get the whole batch; where rank 0 finds the
    file and rank 1 does not, both solve again instead of one waiting forever in the gather."""
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tests)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tests / "_teacher_worker.py"), str(tmp_path)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("the two ranks did not finish in 180 s: a rank is stuck in a collective")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "sharded.pt", weights_only=True)
    assert got["cached"] == [False, False, True]
    assert torch.equal(got["mixed"], got["first"]) and torch.equal(got["hit"], got["first"])
    x_T = torch.randn(6, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    single = tuning.teacher(ring[1], x_T, torch.tensor([1.0, 0.5, 1e-3], dtype=torch.float64))
    # each rank's 3 rows share one adaptive step size: not the 6-row solve's steps, its tolerance
    assert torch.allclose(got["first"], single.states, atol=1e-8, rtol=0)
