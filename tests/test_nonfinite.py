"""Non-finite values stop every sampler with NonFiniteError naming the step (or the network
evaluation) and the time where they first appeared; library failures never leak raw; and the
sampler-side bad inputs of issue 16 are refused with `<name> must be <accepted>; got <given>`."""
import math
import re

import pytest
import torch

import scoresde as sd
from scoresde.solvers import NonFiniteError

SDE = sd.VPSDE()
ORACLE = sd.data.GaussianMixture.ring(modes=4).score_model(SDE)
#: where the broken network starts returning NaN: between grid times 0.5005 and 0.4006 of a
#: 10-step uniform grid (steps 6 and 7 end at 0.4006 and 0.3007)
BAD_BELOW = 0.5


def _broken(value=float("nan"), below=BAD_BELOW, seen=None):
    """An eps network that is 0 (exact for N(0, I) data) at t >= `below` and `value` below it."""
    def net(x, t):
        if seen is not None:
            seen.append(float(t.min()))  # per-sample times (adaptive-sde): the lowest
        return torch.where(t[:, None] < below, torch.full_like(x, value), torch.zeros_like(x))

    return sd.ScoreModel(net, SDE, prediction="eps")


def _gen():
    return torch.Generator().manual_seed(0)


def _evaluation_time(message):
    """(evaluation number, t) named in a NonFiniteError message."""
    match = re.search(r"evaluation (?:was number )?(\d+) of \d+ \(t=([0-9.e-]+)\)", message)
    assert match, message
    return int(match.group(1)), float(match.group(2))


def _first_bad(seen):
    """(1-based number, time) of the first evaluation below BAD_BELOW."""
    k = next(i for i, t in enumerate(seen) if t < BAD_BELOW)
    return k + 1, seen[k]


# ---- every sampler stops at the first non-finite evaluation ------------------------------------
LIBRARY_RUNS = {
    "torchdiffeq-dopri5": dict(solver="torchdiffeq"),
    "torchdiffeq-bosh3": dict(solver="torchdiffeq", method="bosh3"),
    "scipy-RK45": dict(solver="scipy"),
    "scipy-LSODA": dict(solver="scipy", method="LSODA"),
    "adaptive-sde": dict(solver="adaptive-sde"),
}


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("run", list(LIBRARY_RUNS))
def test_adaptive_and_library_solvers_name_the_first_non_finite_evaluation(run, value):
    """torchdiffeq's adaptive methods (which would raise 'underflow in dt'), scipy (which would
    report a failed step size) and adaptive-sde report the number and time of the first
    non-finite network evaluation, not the last accepted time."""
    seen = []
    model = _broken(value, seen=seen)
    kwargs = dict(LIBRARY_RUNS[run])
    if kwargs["solver"] == "adaptive-sde":
        kwargs["generator"] = _gen()
    with pytest.raises(NonFiniteError) as raised:
        sd.sample(model, shape=(4, 2), **kwargs)
    message = str(raised.value)
    k, t = _evaluation_time(message)
    if kwargs["solver"] == "adaptive-sde":  # per-sample times: the latest bad row's time is named
        assert k == _first_bad(seen)[0] and _first_bad(seen)[1] <= t < BAD_BELOW
    else:
        assert (k, pytest.approx(t, rel=1e-5)) == _first_bad(seen)
    assert t < BAD_BELOW and kwargs["solver"] in message


@pytest.mark.parametrize("kwargs, step, t_step", [
    (dict(solver="euler"), 7, 0.3007),  # evaluated at 0.4006, the state after step 7 is NaN
    (dict(solver="torchdiffeq", method="rk4"), 6, 0.4006),  # its midpoint stage at 0.4506 is NaN
    (dict(solver="torchdiffeq", method="euler"), 7, 0.3007),
    (dict(solver="torchsde", generator=None), 7, 0.3007),
    (dict(solver="euler_maruyama", generator=None), 7, 0.3007),
])
def test_fixed_step_solvers_name_the_step_and_the_first_non_finite_evaluation(kwargs, step, t_step):
    seen = []
    kwargs = {**kwargs, **({"generator": _gen()} if "generator" in kwargs else {})}
    with pytest.raises(NonFiniteError, match=rf"after step {step} of 10 \(t={t_step}\)") as raised:
        sd.sample(_broken(seen=seen), shape=(4, 2), steps=10, schedule="uniform", **kwargs)
    if kwargs["solver"] in ("torchdiffeq", "torchsde"):  # library solvers also name the evaluation
        assert _evaluation_time(str(raised.value)) == pytest.approx(_first_bad(seen), rel=1e-5)


def test_deferred_evaluation_check_reports_the_same(monkeypatch):
    """The accelerator path (the output check kept on the device, read once after the solve)
    names the same evaluation."""
    from scoresde.solvers import _loop

    original = _loop.EvalWatch.__init__
    monkeypatch.setattr(_loop.EvalWatch, "__init__", lambda self, deferred=None: original(self, deferred=True))
    for kwargs in (dict(method="rk4", steps=10, schedule="uniform"), dict()):
        seen = []
        with pytest.raises(NonFiniteError) as raised:
            sd.sample(_broken(seen=seen), shape=(4, 2), solver="torchdiffeq", **kwargs)
        assert _evaluation_time(str(raised.value)) == pytest.approx(_first_bad(seen), rel=1e-5)


def test_non_finite_denoising_evaluation_stops_sampling():
    t_end = 1e-3
    model = _broken(below=2 * t_end)  # finite at every grid time, NaN at the final denoise only
    out = sd.sample(model, shape=(4, 2), solver="euler", steps=5, schedule="uniform", t_end=t_end)
    assert bool(torch.isfinite(out.x).all())
    with pytest.raises(NonFiniteError, match=r"final denoising evaluation \(denoise=True\) at t=0\.001"):
        sd.sample(model, shape=(4, 2), solver="euler", steps=5, schedule="uniform", t_end=t_end, denoise=True)


def test_library_failures_without_non_finite_values_are_not_raw():
    """torchdiffeq's own assertion (a step budget exhausted) becomes a RuntimeError naming the
    solver, not a raw AssertionError nor a NonFiniteError."""
    with pytest.raises(RuntimeError, match=r"torchdiffeq's 'dopri5' failed after \d+ evaluations: "
                                           r"AssertionError: max_num_steps exceeded") as raised:
        sd.sample(ORACLE, shape=(4, 2), solver="torchdiffeq", options={"max_num_steps": 2})
    assert type(raised.value) is RuntimeError
    with pytest.raises(RuntimeError, match=r"adaptive-sde used max_evals=4 evaluations with 4 samples unfinished.*"
                                           r"raise max_evals") as raised:
        sd.sample(ORACLE, shape=(4, 2), solver="adaptive-sde", max_evals=4, generator=_gen())
    assert not isinstance(raised.value, NonFiniteError)


def test_an_error_inside_an_evaluation_propagates_unchanged():
    def tuple_net(x, t):
        return (x,)

    model = sd.ScoreModel(tuple_net, SDE)
    for solver in ("torchdiffeq", "scipy", "torchsde"):
        with pytest.raises(ValueError, match=r"the network's output must be a tensor like its input x.*; got a tuple"):
            sd.sample(model, shape=(4, 2), solver=solver, generator=_gen() if solver == "torchsde" else None)


def test_torchdiffeq_never_evaluates_past_T_in_float32():
    """A first step below float32's resolution at T (as very small rtol produces after
    rejections) made torchdiffeq evaluate at T + 1 ulp, refused as 't ... [1, 1]'; times are
    now clamped into [t_end, T] in float64, and the range message prints every digit."""
    seen = []
    model = _broken(below=-1.0, seen=seen)  # finite everywhere; records times
    out = sd.sample(model, shape=(2, 2), solver="torchdiffeq", options={"first_step": 1e-9}, generator=_gen())
    assert bool(torch.isfinite(out.x).all()) and max(seen) <= SDE.T and min(seen) >= SDE.t_eps
    above = float(torch.nextafter(torch.tensor(1.0), torch.tensor(2.0)))
    with pytest.raises(ValueError, match=r"t must be times in \[0(\.0)?, 1(\.0)?\]; got 'values in \[1\.00000011920928"):
        SDE.check_time(torch.tensor([above], dtype=torch.float64))


# ---- silent acceptance and types, refused before any work --------------------------------------
def _refused(call, *patterns, kind=ValueError):
    """`call` raises `kind` with every pattern in its message; no network evaluation ran."""
    nfe = ORACLE.nfe
    with pytest.raises(kind) as raised:
        call()
    for pattern in patterns:
        assert re.search(pattern, str(raised.value)), (pattern, str(raised.value))
    assert ORACLE.nfe == nfe, "refused after work started"
    return str(raised.value)


@pytest.mark.parametrize("kwargs, name", [
    (dict(solver="torchdiffeq"), "torchdiffeq's adaptive method 'dopri5'"),
    (dict(solver="torchdiffeq", method="dopri8"), "torchdiffeq's adaptive method 'dopri8'"),
    (dict(solver="scipy"), "the adaptive solver 'scipy'"),
    (dict(solver="adaptive_sde"), "the adaptive solver 'adaptive-sde'"),
])
def test_steps_for_an_adaptive_solver_are_refused(kwargs, name):
    """`steps` was ignored while SampleResult.times reported a grid never used."""
    _refused(lambda: sd.sample(ORACLE, shape=(4, 2), steps=7, **kwargs),
             r"^steps must be None for " + re.escape(name), r"chooses its own steps", r"; got 7$")
    _refused(lambda: sd.sample(ORACLE, shape=(4, 2), schedule=[1.0, 0.5, 0.1], **kwargs),
             r"^schedule must be a named schedule or the two times \[T, t_end\]", r"got a grid of 3 times$")
    out = sd.sample(ORACLE, shape=(4, 2), generator=_gen(), **kwargs)  # the times it reports are its ends
    assert out.times.tolist() == [SDE.T, SDE.t_eps]


def test_torchdiffeq_fixed_grid_methods_step_on_the_grid():
    out = sd.sample(ORACLE, shape=(4, 2), solver="torchdiffeq", method="rk4", steps=5, schedule="uniform")
    assert out.nfe == 5 * 4 and len(out.times) == 6
    default = sd.sample(ORACLE, shape=(4, 2), solver="torchdiffeq", method="euler")
    assert default.nfe == sd.solvers.DEFAULT_STEPS == len(default.times) - 1


def test_schedule_starting_below_T_needs_x_T():
    _refused(lambda: sd.sample(ORACLE, shape=(4, 2), solver="euler", schedule=[0.5, 0.2, 0.01]),
             r"^x_T must be given \(the state at the schedule's first time 0\.5\)", r"below T = 1",
             r"; got x_T=None$")
    x_T = SDE.prior_sample((4, 2), generator=_gen())  # given x_T, starting lower is the caller's plan
    assert sd.sample(ORACLE, x_T=x_T, solver="euler", schedule=[0.5, 0.2, 0.01]).nfe == 2


@pytest.mark.parametrize("method, options, unknown", [
    ("dopri5", {"step_size": 0.1}, "'step_size'"),
    ("dopri5", {"foo": 1, "bar": 2}, "'bar', 'foo'"),
    ("rk4", {"step_size": 0.1}, "'step_size'"),  # would step off the schedule that times reports
    ("rk4", {"first_step": 0.1}, "'first_step'"),
])
def test_unknown_torchdiffeq_options_are_refused(method, options, unknown):
    """torchdiffeq only warns about options its method does not take."""
    message = _refused(lambda: sd.sample(ORACLE, shape=(4, 2), solver="torchdiffeq", method=method, options=options),
                       rf"^options must be a dict of the options torchdiffeq's '{method}' takes \(",
                       rf"; got unknown {unknown}$")
    accepted = sd.solvers.backends.TORCHDIFFEQ_OPTIONS[method]
    assert all(name in message for name in accepted)
    _refused(lambda: sd.sample(ORACLE, shape=(4, 2), solver="torchdiffeq", options=[("rtol", 1)]),
             r"^options must be None or a dict of torchdiffeq options; got 'list'$")


def test_known_torchdiffeq_options_pass():
    out = sd.sample(ORACLE, shape=(4, 2), solver="torchdiffeq", options={"max_num_steps": 1000, "safety": 0.8})
    assert bool(torch.isfinite(out.x).all())


@pytest.mark.parametrize("call, patterns", [
    (lambda: sd.sample(ORACLE, shape=(4, 2), solver="pc", snr=math.inf, generator=_gen()),
     [r"^snr must be a finite number >= 0; got inf$"]),
    (lambda: sd.sample(ORACLE, shape=(4, 2), solver="pc", snr=math.nan, generator=_gen()),
     [r"^snr must be a finite number >= 0; got nan$"]),
    (lambda: sd.sample(ORACLE, shape=(4, 2), solver="adaptive-sde", max_evals=0, generator=_gen()),
     [r"^max_evals must be an integer >= 1; got 0$"]),
    (lambda: sd.sample(ORACLE, shape=(4, 2), solver="euler", steps=10**12),
     [r"^steps must be an integer in \[1, 1000000\] \(scoresde.schedules.MAX_STEPS\); got 1000000000000$"]),
    (lambda: sd.sample(ORACLE, shape=(4, 2), solver="euler", steps=math.inf),
     [r"^steps must be an integer >= 1; got inf$"]),
    (lambda: sd.sample(ORACLE, shape=(4, 2), solver="euler", steps=2.5), [r"^steps must be an integer >= 1; got 2.5$"]),
])
def test_sampler_values_refused_before_work(call, patterns):
    message = _refused(call, *patterns)
    assert "non-finite" not in message


def test_huge_steps_refused_before_allocating(monkeypatch):
    """The bound is checked before any grid exists: no linspace of 10**12 times is attempted."""
    def no_grid(*args, **kwargs):
        raise AssertionError("a grid was built")

    monkeypatch.setattr(sd.solvers.sampling, "get_schedule", no_grid)
    _refused(lambda: sd.sample(ORACLE, shape=(4, 2), solver="euler", steps=10**12), r"^steps must be an integer in")


@pytest.mark.parametrize("net, given", [
    (lambda x, t: (x,), "got a tuple"),
    (lambda x, t: [x], "got a list"),
    (lambda x, t: x.double(), "got torch.float64"),
    (lambda x, t: x.half(), "got torch.float16"),
    (lambda x, t: x[:, :1], r"got shape \(4, 1\)"),
    (lambda x, t: x.to("meta"), "got a tensor on meta"),
])
def test_network_outputs_of_the_wrong_kind_are_refused(net, given):
    model = sd.ScoreModel(net, SDE)
    x = torch.zeros(4, 2)
    accepted = r"^the network's output must be a tensor like its input x: shape \(4, 2\), torch.float32, on cpu; "
    with pytest.raises(ValueError, match=accepted + given + "$"):
        model(x, 0.5)
    with pytest.raises(ValueError, match=accepted + given + "$"):
        sd.sample(model, x_T=x, solver="euler", steps=2)
    if "shape" not in given:  # evaluated row by row under seeds, the output is refused alike
        with pytest.raises(ValueError, match=accepted + given + "$"):
            sd.sample(model, x_T=x, solver="euler", steps=2, seeds=[0, 1, 2, 3])


def test_network_output_under_autocast_is_cast_to_the_state_dtype():
    model = sd.ScoreModel(lambda x, t: x.bfloat16(), SDE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.ones(4, 2), 0.5)
    assert out.dtype == torch.float32
