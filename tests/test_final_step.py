"""Final-step control of the multistep solvers (lower_order_final as a threshold, final_step),
heun's and edm-sde's last_step, and deis's two polynomial bases, against exact answers:
closed-form integrals, the DDIM identities of the jump to sigma = 0, convergence slopes and
counted NFE."""
import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde.solvers.exponential import _lagrange_integrals

MULTISTEP = ["dpm++2m", "dpm++3m", "unipc", "ipndm", "deis", "dpm-solver-v3"]
SDE = sd.VPSDE()
ORACLE = sd.data.GaussianMixture.ring(modes=8).score_model(SDE)
X_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def solve(solver, steps=6, schedule="logsnr", **options):
    return sd.sample(ORACLE, x_T=X_T.clone(), solver=solver, steps=steps, schedule=schedule, **options)


@pytest.mark.parametrize("solver", MULTISTEP)
@pytest.mark.parametrize("final_step", ["t_end", "denoise", "zero"])
def test_counted_nfe_is_what_the_registry_says(solver, final_step):
    out = solve(solver, steps=5, final_step=final_step)
    info = sd.solvers.get(solver)
    assert out.nfe == info.nfe(5, {"final_step": final_step}) == 5 + (final_step == "denoise")
    assert info.steps_for_nfe(5, {"final_step": final_step}) == 5 - (final_step == "denoise")


@pytest.mark.parametrize("solver", MULTISTEP)
def test_lower_order_final_is_a_threshold_and_booleans_mean_15_and_0(solver):
    tapered, untapered = solve(solver, lower_order_final=7).x, solve(solver, lower_order_final=6).x  # 6 steps
    assert torch.equal(solve(solver, lower_order_final=True).x, solve(solver, lower_order_final=15).x)
    assert torch.equal(solve(solver, lower_order_final=True).x, tapered)
    assert torch.equal(solve(solver, lower_order_final=False).x, untapered)
    assert torch.equal(solve(solver, lower_order_final=0).x, untapered)
    # the final steps at lower order move the samples by far more than round-off
    assert float((tapered - untapered).abs().max()) > 1e-4


def test_default_thresholds_per_solver():
    """The DPM-Solver++ family and unipc taper below 15 steps (as before), ipndm and deis never."""
    for solver, below in [("dpm++2m", 15), ("dpm++3m", 15), ("unipc", 15), ("ipndm", 0), ("deis", 0)]:
        for steps in (14, 15):
            assert torch.equal(solve(solver, steps).x, solve(solver, steps, lower_order_final=below).x)


@pytest.mark.parametrize("solver", MULTISTEP)
def test_denoise_is_sample_denoise(solver):
    """final_step="denoise" is the Tweedie evaluation of sample(denoise=True)."""
    got = solve(solver, final_step="denoise").x
    assert torch.equal(got, solve(solver, denoise=True).x)


@pytest.mark.parametrize("solver, options", [("dpm++2m", {}), ("dpm++3m", {}), ("unipc", {}),
                                             ("ipndm", {"history": 1}), ("deis", {"history": 1})])
def test_zero_is_the_data_prediction_at_the_second_to_last_time(solver, options):
    """The jump to sigma = 0 at first order is x = x0_pred(x, t_{N-1}): the same as N-1 steps on
    the grid without its last time, then denoising there (untapered, so the histories agree)."""
    ts = sd.schedules.get_schedule("logsnr", SDE, 6)
    zero = sd.sample(ORACLE, x_T=X_T.clone(), solver=solver, steps=None, schedule=ts, final_step="zero",
                     lower_order_final=0, **options)
    short = sd.sample(ORACLE, x_T=X_T.clone(), solver=solver, steps=None, schedule=ts[:-1], denoise=True,
                      lower_order_final=0, **options)
    assert zero.nfe == 6 and short.nfe == 6
    torch.testing.assert_close(zero.x, short.x, rtol=0, atol=1e-13)


def _quadrature(nodes, lo, hi, basis, j):
    """int_lo^hi l_j ds by 200-point Gauss-Legendre in u = log s (basis log_rho, ds = e^u du,
    singular-free) or in s (rho)."""
    g, w = np.polynomial.legendre.leggauss(200)
    if basis == "rho":
        s = (hi - lo) / 2 * g + (hi + lo) / 2
        u, nodes_u, jac = s, np.array(nodes), (hi - lo) / 2 * np.ones_like(s)
    else:
        a, b = np.log(lo), np.log(hi) if hi > 0 else np.log(lo) - 60.0  # e^-60: below round-off
        u = (b - a) / 2 * g + (b + a) / 2
        nodes_u, jac = np.log(nodes), (b - a) / 2 * np.exp(u)
    others = [n for k, n in enumerate(nodes_u) if k != j]
    basis_j = np.prod([(u - n) / (nodes_u[j] - n) for n in others], axis=0)
    return float(np.sum(w * jac * basis_j))


@pytest.mark.parametrize("basis", ["rho", "log_rho"])
@pytest.mark.parametrize("hi", [0.8, 0.0])
def test_lagrange_integrals_match_quadrature(basis, hi):
    nodes, lo = [1.3, 2.9, 7.0], 1.3
    got = _lagrange_integrals(nodes, lo, hi, basis)
    want = [_quadrature(nodes, lo, hi, basis, j) for j in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)
    assert abs(sum(got) - (hi - lo)) < 1e-12  # the basis sums to 1: constants are integrated exactly
    # the tensor path (a differentiable grid) gives the same numbers, and a gradient
    t_nodes = [torch.tensor(n, dtype=torch.float64, requires_grad=True) for n in nodes]
    t_got = _lagrange_integrals(t_nodes, t_nodes[0], hi, basis)
    assert [float(v.detach()) for v in t_got] == got
    assert t_got[1].requires_grad


@pytest.fixture(scope="module")
def reference():
    """8 of the starting points and their tight reference solve to t_end."""
    return X_T[:8], sd.solvers.reference_solve(ORACLE, X_T[:8]).x


@pytest.mark.parametrize("basis", ["rho", "log_rho"])
def test_deis_has_its_order_in_both_bases(basis, reference):
    """Terminal error of deis (history 3) against a tight reference falls like steps^-3 (the
    log-log slope over two doublings within 0.35, as in test_ode_solvers)."""
    x_T, ref = reference
    errors = [float((sd.sample(ORACLE, x_T=x_T.clone(), solver="deis", steps=n, basis=basis).x - ref)
                    .pow(2).mean().sqrt()) for n in (80, 160, 320)]
    slope = -np.polyfit(np.log([80, 160, 320]), np.log(errors), 1)[0]
    assert abs(slope - 3) < 0.35, errors


@pytest.mark.parametrize("solver", ["heun", "edm-sde"])
@pytest.mark.parametrize("last_step", ["euler", "heun"])
def test_last_step_nfe_is_what_the_registry_says(solver, last_step):
    """A full Heun last step costs its second evaluation; the default (Euler) saves it."""
    out = solve(solver, steps=5, last_step=last_step, generator=torch.Generator().manual_seed(0))
    info = sd.solvers.get(solver)
    assert out.nfe == info.nfe(5, {"last_step": last_step}) == 10 - (last_step == "euler")
    assert info.steps_for_nfe(9, {"last_step": last_step}) == (5 if last_step == "euler" else 4)
    assert info.extra_evals == -1  # the default is EDM's Euler last step


@pytest.mark.parametrize("last_step", ["euler", "heun"])
def test_edm_sde_without_churn_is_heun_under_edm(last_step):
    """With S_churn = 0, edm-sde (Heun in sigma_hat) and heun (Heun in t) are the same method
    under EDMSDE (t = sigma_hat, dx/dt = eps), last step included."""
    edm = sd.EDMSDE()
    oracle = sd.data.GaussianMixture.ring(modes=8).score_model(edm)
    x_T = X_T * edm.sigma(edm.T)
    runs = [sd.sample(oracle, x_T=x_T.clone(), solver=s, steps=6, schedule="karras", last_step=last_step, **o)
            for s, o in (("heun", {}), ("edm-sde", {"S_churn": 0.0}))]
    torch.testing.assert_close(runs[0].x, runs[1].x, rtol=1e-12, atol=1e-12)
    other = sd.sample(oracle, x_T=x_T.clone(), solver="heun", steps=6, schedule="karras",
                      last_step="heun" if last_step == "euler" else "euler").x
    assert float((other - runs[0].x).abs().max()) > 1e-4


def test_heun_with_a_heun_last_step_has_order_2(reference):
    """Terminal error of heun with last_step="heun" against a tight reference falls like NFE^-2
    (the log-log slope over two doublings within 0.35, as in test_ode_solvers)."""
    x_T, ref = reference
    nfes, errors = [], []
    for steps in (40, 80, 160):
        out = sd.sample(ORACLE, x_T=x_T.clone(), solver="heun", steps=steps, last_step="heun")
        nfes.append(out.nfe)
        errors.append(float((out.x - ref).pow(2).mean().sqrt()))
    slope = -np.polyfit(np.log(nfes), np.log(errors), 1)[0]
    assert nfes == [80, 160, 320] and abs(slope - 2) < 0.35, errors


@pytest.mark.parametrize("call, match", [
    (lambda: solve("dpm++2m", final_step="end"), r"final_step must be one of: t_end, denoise, zero; got 'end'"),
    (lambda: solve("unipc", lower_order_final=-1), r"lower_order_final must be True, False or an integer >= 0; got -1"),
    (lambda: solve("deis", lower_order_final=2.5), r"lower_order_final must be True, False or an integer >= 0; got 2.5"),
    (lambda: solve("deis", basis="sigma"), r"basis must be one of: rho, log_rho; got 'sigma'"),
    (lambda: solve("heun", last_step="midpoint"), r"last_step must be one of: euler, heun; got 'midpoint'"),
    (lambda: solve("edm-sde", last_step=None), r"last_step must be one of: euler, heun; got None"),
    (lambda: sd.solvers.get("heun").steps_for_nfe(10, {"last_step": "Heun"}),
     r"last_step must be one of: euler, heun; got 'Heun'"),
])
def test_bad_input_raises_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
