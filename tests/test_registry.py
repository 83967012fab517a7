"""The solver registry and the front door's contract: one naming convention with the old names as
aliases, evaluation counts that follow the options, explicit arguments never overridden, renamed
options refused with their new names."""
import pytest
import torch

import scoresde as sd
from scoresde.data.problems import get_problem
from scoresde.solvers import available, get

RING = get_problem("ring2d")
OLD_NAMES = {"euler_maruyama": "euler-maruyama", "reverse_diffusion": "reverse-diffusion", "sde_heun": "sde-heun",
             "edm_sde": "edm-sde", "dpm++2m_sde": "dpm++2m-sde", "adaptive_sde": "adaptive-sde"}


def test_canonical_names_are_lower_case_with_hyphens():
    for name in available():
        assert name == name.lower() and "_" not in name and " " not in name, name


@pytest.mark.parametrize("old, new", list(OLD_NAMES.items()))
def test_old_names_are_aliases_of_the_canonical_ones(old, new):
    assert get(old) is get(new) and old not in available()
    model = RING.score_model(sd.VPSDE())
    steps = None if get(new).adaptive else 6
    runs = [sd.sample(model, shape=(16, 2), solver=name, steps=steps, generator=torch.Generator().manual_seed(0))
            for name in (old, new)]
    assert torch.equal(runs[0].x, runs[1].x) and runs[0].solver == runs[1].solver == new


def test_unknown_name_lists_the_canonical_ones():
    with pytest.raises(ValueError, match="solver must be one of: euler, heun, .*dpm\\+\\+2m-sde.*; got 'dpm\\+\\+9m'") as err:
        get("dpm++9m")
    assert "euler_maruyama" not in str(err.value)


def test_order_has_a_kind():
    for name in available():
        info = get(name)
        assert info.order_kind == ("global" if info.kind == "ode" else "weak"), name


def test_pc_evaluations_follow_corrector_steps():
    model = RING.score_model(sd.VPSDE())
    for k in (0, 1, 3):
        out = sd.sample(model, shape=(8, 2), solver="pc", steps=5, corrector_steps=k, per_sample_step=False,
                        generator=torch.Generator().manual_seed(0))
        assert get("pc").evals(dict(corrector_steps=k)) == 1 + k
        assert out.nfe == get("pc").nfe(5, dict(corrector_steps=k)) == 5 * (1 + k)
    assert get("pc").evals_per_step == 2 and get("euler-maruyama").evals_per_step == 1
    assert get("pc").steps_for_nfe(20, dict(corrector_steps=3)) == 5


def test_nfe_budget_policy_never_exceeds_the_budget():
    for name in available():
        info = get(name)
        if info.adaptive:
            continue
        lowest = max(info.evals() + info.extra_evals, 1)
        for budget in range(lowest, 40):
            steps = info.steps_for_nfe(budget)
            assert info.nfe(steps) <= budget < info.nfe(steps + 1), (name, budget)
        with pytest.raises(ValueError, match=f"nfe must be an integer >= {lowest}"):
            info.steps_for_nfe(lowest - 1 if lowest > 1 else 0)


def test_renamed_options_are_refused_with_their_new_names():
    model = RING.score_model(sd.VPSDE())
    with pytest.raises(ValueError, match="order was renamed history"):
        sd.sample(model, shape=(4, 2), solver="dpm++2m", order=3)
    with pytest.raises(ValueError, match="noise was renamed noise_fn"):
        sd.sample(model, shape=(4, 2), solver="ancestral", noise=torch.randn_like)
    assert sd.sample(model, shape=(4, 2), solver="dpm++2m", history=3, steps=4).nfe == 4


def test_schedule_options_reach_the_schedule():
    sde = sd.EDMSDE()
    model = RING.score_model(sde)
    out = sd.sample(model, shape=(4, 2), solver="ddim", steps=6, schedule="karras", schedule_options={"rho": 3.0})
    assert torch.equal(out.times, sd.schedules.karras(sde, 6, rho=3.0))
    assert not torch.equal(out.times, sd.schedules.karras(sde, 6))
    with pytest.raises(ValueError, match=r"rho must be a finite number in \[0.1, 1000\]; got -1"):
        sd.sample(model, shape=(4, 2), solver="ddim", schedule="karras", schedule_options={"rho": -1.0})
    with pytest.raises(ValueError, match="schedule options \\(rho\\) apply to named schedules only"):
        sd.sample(model, shape=(4, 2), solver="ddim", schedule=[80.0, 1.0, 0.002], schedule_options={"rho": 3.0})


def test_a_user_grid_sets_the_step_count_and_an_explicit_other_count_is_refused():
    model = RING.score_model(sd.VPSDE())
    out = sd.sample(model, shape=(4, 2), solver="ddim", schedule=[1.0, 0.3, 0.05, 0.001])
    assert out.nfe == 3
    assert sd.sample(model, shape=(4, 2), solver="ddim", steps=3, schedule=[1.0, 0.3, 0.05, 0.001]).nfe == 3
    with pytest.raises(ValueError, match="steps must be None or the given schedule's 3 steps .*; got 10"):
        sd.sample(model, shape=(4, 2), solver="ddim", steps=10, schedule=[1.0, 0.3, 0.05, 0.001])


def test_any_grid_provider_is_a_schedule():
    class Halving:
        def grid(self, sde, solver, steps, t_end):
            return torch.tensor([1.0, 0.5, 0.25, 0.125, 0.001], dtype=torch.float64)[: (steps or 4) + 1]

    model = RING.score_model(sd.VPSDE())
    assert sd.sample(model, shape=(4, 2), solver="ddim", schedule=Halving()).nfe == 4
    assert sd.sample(model, shape=(4, 2), solver="ddim", schedule=Halving(), steps=2).times.tolist() == [1.0, 0.5, 0.25]


def test_state_hook_sees_every_step_and_the_final_state():
    model = RING.score_model(sd.VPSDE())
    seen = []

    def hook(x, t, last):
        seen.append((round(t, 6), last))
        return x

    sd.sample(model, shape=(4, 2), solver="ddim", schedule=[1.0, 0.5, 0.001], state_hook=hook)
    assert seen == [(1.0, False), (0.5, False), (0.001, True)]
    with pytest.raises(ValueError, match="solver must be one that steps on the grid itself.*; got 'torchdiffeq'"):
        sd.sample(model, shape=(4, 2), solver="torchdiffeq", state_hook=hook)


def test_moved_names_say_where_they_went():
    with pytest.raises(AttributeError, match="scoresde.schedules.optimize moved to scoresde.tuning.optimize"):
        sd.schedules.optimize
    with pytest.raises(AttributeError, match="scoresde.guidance.Inpainting moved to scoresde.solvers.Inpainting"):
        sd.guidance.Inpainting
    with pytest.raises(AttributeError, match="classifier_loss moved to scoresde.losses.classifier_loss"):
        sd.guidance.classifier_loss
