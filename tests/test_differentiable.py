"""Fixed-step solvers differentiate with respect to their time grid (the base of learned
samplers): with a schedule tensor that requires grad, the gradient of a loss of the endpoint
equals finite differences, the forward values are bit-identical to the fast float path, and
that path is bit-identical to the solvers before grids became differentiable."""
import pytest
import torch

import scoresde as sd
from scoresde.data import GaussianMixture
from scoresde.solvers import Loop
from scoresde.solvers._loop import Grid

FIXED_STEP = [n for n in sd.solvers.available() if not sd.solvers.get(n).adaptive
              and sd.solvers.get(n).fn.__module__ != "scoresde.solvers.backends"]  # not torchsde's
SDES = {"vp": sd.VPSDE(), "edm": sd.EDMSDE()}
MODELS = {key: GaussianMixture.ring().score_model(sde) for key, sde in SDES.items()}
GRIDS = {("vp", 3): [1.0, 0.6, 0.25, 1e-3], ("edm", 3): [80.0, 9.0, 1.1, 0.002],
         ("vp", 6): [1.0, 0.8, 0.6, 0.4, 0.2, 0.07, 1e-3]}


def solve(sde_key, solver, times, grad=False, **options):
    """The float64 endpoint (4, 2) of a solve on the ring oracle from a fixed x_T, with fixed
    noise for SDE solvers."""
    sde = SDES[sde_key]
    x_T = sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    if sd.solvers.get(solver).kind == "sde":
        noise = torch.Generator().manual_seed(7)
        options["noise_fn"] = lambda like: torch.randn(like.shape, generator=noise, dtype=like.dtype)
    return sd.sample(MODELS[sde_key], sde, x_T=x_T, solver=solver, schedule=times, enable_grad=grad, **options).x


def loss(x):
    return (x**2).sum()


@pytest.mark.parametrize("sde_key", SDES)
@pytest.mark.parametrize("solver", FIXED_STEP)
def test_grid_gradient_matches_finite_differences(solver, sde_key):
    """d loss / d t_k for the interior grid times, by autograd through the solver's
    coefficients and the network's time input, against central differences (step 1e-6 t_k)."""
    times = GRIDS[(sde_key, 3)]
    ts = torch.tensor(times, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(solve(sde_key, solver, ts, grad=True)), ts)
    fd = []
    for k in range(1, len(times) - 1):
        step, values = 1e-6 * times[k], []
        for sign in (1, -1):
            shifted = list(times)
            shifted[k] += sign * step
            values.append(float(loss(solve(sde_key, solver, torch.tensor(shifted, dtype=torch.float64)))))
        fd.append((values[0] - values[1]) / (2 * step))
    fd = torch.tensor(fd, dtype=torch.float64)
    torch.testing.assert_close(grad[1:-1], fd, rtol=1e-5, atol=1e-5 * float(fd.abs().max()))


@pytest.mark.parametrize("sde_key, steps", [("vp", 3), ("edm", 3), ("vp", 6)])
@pytest.mark.parametrize("solver", FIXED_STEP)
def test_grad_path_computes_the_same_numbers(solver, sde_key, steps):
    """The differentiable path's endpoint is bit-identical to the float path's (its coefficient
    functions return the float functions' values)."""
    times = GRIDS[(sde_key, steps)]
    with torch.no_grad():
        fast = solve(sde_key, solver, torch.tensor(times, dtype=torch.float64))
    x = solve(sde_key, solver, torch.tensor(times, dtype=torch.float64, requires_grad=True), grad=True)
    assert x.requires_grad
    assert torch.equal(x.detach(), fast)


#: endpoints (rows 0 and 1 of `solve`) recorded with a plain no-grad `sample` call from the
#: solvers as they were before grids became differentiable (bit for bit on the recording machine;
#: the tolerance below only allows other hardware's last-bit differences)
RECORDED = [
    ("vp", 3, "euler", {},
     (1.1946216060642567, 0.2599236077449718, 0.1449110747760465, -0.9996065876650922)),
    ("vp", 3, "heun", {},
     (1.409010917539907, 0.3061446627038843, 0.18378207829789878, -1.2685753967114335)),
    ("vp", 3, "midpoint", {},
     (1.6125958680265096, 0.22923839081388422, 0.1867407527243064, -1.7060143515749013)),
    ("vp", 3, "rk4", {},
     (1.396083843179831, 0.1780636889068446, 0.1140550576698803, -1.3422206520880526)),
    ("vp", 3, "ddim", {},
     (0.8646109115686667, 0.18816060450990352, 0.10404896449688246, -0.7176910702311031)),
    ("vp", 3, "dpm-solver-2", {},
     (2.477579600492213, -0.4050327578005261, -0.2582422830081815, -2.567122591230328)),
    ("vp", 3, "dpm-solver-3", {},
     (0.9879881042330376, 0.29483023146087817, 0.17161240049685814, -0.7867821567947485)),
    ("vp", 3, "dpm++3m", {},
     (0.8860405794584788, 0.19281872056428545, 0.10713202878529561, -0.738962837919609)),
    ("vp", 3, "dpm++2m", {},
     (0.8860405794584788, 0.19281872056428545, 0.10713202878529561, -0.738962837919609)),
    ("vp", 3, "unipc", {},
     (0.8961792540221667, 0.19502312132837818, 0.10852715709051738, -0.74858811590961)),
    ("vp", 3, "ipndm", {},
     (1.516778093497528, 0.33006293302292505, 0.18619973866852682, -1.2843633191382717)),
    ("vp", 3, "deis", {"basis": "rho"},
     (0.9330795933613238, 0.20306034711813667, 0.11246469905642532, -0.7757404105559088)),
    ("vp", 3, "euler-maruyama", {},
     (-1.5168432260562326, 2.994189453438204, -0.03691219627489506, 0.0633037611607341)),
    ("vp", 3, "reverse-diffusion", {},
     (0.6830356148774352, -0.8847734353759636, 0.963279426224028, -1.0593848646155042)),
    ("vp", 3, "ancestral", {},
     (0.07554803953319422, -1.0809303245854853, 0.649962231897912, -0.26570135152770497)),
    ("vp", 3, "pc", {},
     (1.310430977691194, -1.412629162905323, 1.816151750200633, -0.22286070462269325)),
    ("vp", 3, "sde-heun", {},
     (0.08974716170217456, -0.11829887587781399, -1.0764153808010513, -0.7970614745591967)),
    ("vp", 3, "edm-sde", {},
     (1.100915903525524, 0.5801475969665277, 0.7576289270545928, -1.1906600128650315)),
    ("vp", 3, "dpm++2m-sde", {},
     (0.07049819381470551, -1.0653159685053673, 0.6857549025255195, -0.31954605484338117)),
    ("vp", 3, "sde-dpm-solver-1", {},
     (0.0755480395331942, -1.0809303245854855, 0.6499622318979125, -0.2657013515277052)),
    ("vp", 6, "dpm-solver-3", {},
     (1.4243101624308019, 0.08780709606720408, 0.04821710428107327, -1.3748571854753953)),
    ("vp", 6, "dpm++3m", {},
     (1.4714044438468135, 0.11359598405247517, 0.06556231362742711, -1.431689515248654)),
    ("vp", 6, "ipndm", {},
     (1.2229508223063836, -0.21685971599779516, -0.16163631661613492, -1.1848830723502657)),
    ("vp", 6, "deis", {"basis": "rho"},
     (1.427869993080915, 0.05964140530086954, 0.03081881529546308, -1.410719710777326)),
    ("vp", 6, "pc", {},
     (0.887263497146377, -1.0820095654595165, 0.6962257069056087, -1.3636439357081267)),
    ("vp", 6, "unipc", {'history': 3},
     (1.4799815345699892, 0.11021494056615656, 0.06389372823767968, -1.4447997201618685)),
    ("edm", 3, "euler", {},
     (0.7622128065579321, 0.16588930127429866, 0.08985111266390494, -0.6197461350998229)),
    ("edm", 3, "heun", {},
     (1.3269055615440806, 0.2815792530979378, 0.1826947698536978, -1.2765273391049676)),
    ("edm", 3, "midpoint", {},
     (1.7087004081492272, 0.3549303841870712, 0.24874909374835663, -1.7516484914293367)),
    ("edm", 3, "rk4", {},
     (1.4354063668691626, 0.2500955609735705, 0.15818341748876055, -1.3509170663036403)),
    ("edm", 3, "ddim", {},
     (0.7622128065579344, 0.16588930127429855, 0.08985111266390512, -0.619746135099823)),
    ("edm", 3, "dpm-solver-2", {},
     (2.494091548992913, -0.13722197844555534, -0.09593649733416301, -2.464873946582708)),
    ("edm", 3, "dpm-solver-3", {},
     (0.9671784359432203, 0.24473645474998051, 0.13614343138689022, -0.7786711405000553)),
    ("edm", 3, "dpm++3m", {},
     (0.7836471640221404, 0.17055262460985787, 0.09274211266369957, -0.6396884587760605)),
    ("edm", 3, "dpm++2m", {},
     (0.7836471640221404, 0.17055262460985787, 0.09274211266369957, -0.6396884587760605)),
    ("edm", 3, "unipc", {},
     (0.7869306365918944, 0.17126699629236358, 0.09317907728528209, -0.6427026673718829)),
    ("edm", 3, "ipndm", {},
     (1.3672579388533017, 0.2975677942395536, 0.1628559064232301, -1.1232996790709944)),
    ("edm", 3, "deis", {"basis": "rho"},
     (0.815328159215012, 0.17744915549776072, 0.09621510679494093, -0.663641907673661)),
    ("edm", 3, "euler-maruyama", {},
     (-45.80395082417801, 68.80386238493037, 61.998250909643986, -56.74522851988678)),
    ("edm", 3, "reverse-diffusion", {},
     (0.03302250897797221, -1.7063406257841596, 1.3990107697749128, -0.2726855341283385)),
    ("edm", 3, "ancestral", {},
     (0.08818834566409664, -1.0511004745921089, 0.5083588765011995, -0.13706953998555504)),
    ("edm", 3, "pc", {},
     (1.2523012869502939, -1.260924844308164, 1.7253709740792935, -0.23471824866085989)),
    ("edm", 3, "sde-heun", {},
     (311.2798114882903, -301.0743365128028, -421.18034617794956, 335.3560653361933)),
    ("edm", 3, "edm-sde", {},
     (0.9159310660163833, 0.6259642865382491, 0.7628668846288149, -1.128355223275686)),
    ("edm", 3, "dpm++2m-sde", {},
     (0.08381159704375432, -1.0360289267099554, 0.548221334670252, -0.19100607157069446)),
    ("edm", 3, "sde-dpm-solver-1", {},
     (0.08818834566409667, -1.0511004745921086, 0.5083588765011995, -0.13706953998555502)),
]


@pytest.mark.parametrize("sde_key, steps, solver, options, expected", RECORDED,
                         ids=[f"{r[0]}-{r[1]}-{r[2]}{'-' + str(r[3]) if r[3] else ''}" for r in RECORDED])
def test_float_path_is_unchanged(sde_key, steps, solver, options, expected):
    with torch.no_grad():
        x = solve(sde_key, solver, torch.tensor(GRIDS[(sde_key, steps)], dtype=torch.float64), **options)
    torch.testing.assert_close(x[:2].flatten(), torch.tensor(expected, dtype=torch.float64), rtol=1e-13, atol=1e-13)


def test_plain_times_give_a_float_grid():
    """Times that do not require grad (or grad mode off) keep the fast path: Python floats."""
    sde = sd.VPSDE()
    plain = torch.tensor(GRIDS[("vp", 3)], dtype=torch.float64)
    learned = plain.clone().requires_grad_(True)
    for ts, grad in ((plain, True), (learned, False)):
        with torch.set_grad_enabled(grad):
            loop = Loop(ts, sde)
            assert not loop.grad
            assert all(type(v) is float for v in loop.times)
            g = loop.grid
            assert all(type(v) is float for v in g.t + g.alpha + g.sigma + g.lam + g.sigma_hat)
            assert all(type(v) is float for v in g.at_lambda(g.lam[1] + 0.5 * g.h(1)))
    loop = Loop(learned, sde)
    g = loop.grid
    assert loop.grad and all(v.requires_grad and v.dtype == torch.float64 for v in loop.times + g.lam + g.sigma_hat)
    for a, b in zip(g.sigma_hat, Grid.of(sde, plain).sigma_hat):
        assert float(a.detach()) == b
    out = sd.sample(MODELS["vp"], x_T=torch.zeros(2, 2, dtype=torch.float64), schedule=learned, solver="ddim")
    assert not out.x.requires_grad  # enable_grad=False: no graph, whatever the times
    out = sd.sample(MODELS["vp"], x_T=torch.ones(2, 2, dtype=torch.float64), schedule=learned, solver="ddim",
                    enable_grad=True)
    (grad,) = torch.autograd.grad(out.x.sum(), learned)
    assert bool(torch.isfinite(grad).all()) and bool((grad[1:-1] != 0).all())


class _BisectedVP(sd.sde.AffineSDE):
    """VP's alpha and sigma alone: t_of_log_snr is the base class's bisection, without a graph."""

    def __init__(self):
        self.vp = sd.VPSDE()
        self.T, self.t_eps = self.vp.T, self.vp.t_eps

    def alpha(self, t):
        return self.vp.alpha(t)

    def sigma(self, t):
        return self.vp.sigma(t)


def test_at_lambda_differentiates_an_inverse_without_a_graph():
    """at_lambda attaches dt/dlam = 1/lambda'(t) to a bisected inverse: the same value and
    derivative as VP's closed form."""
    lam = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    grid_ts = torch.tensor([1.0, 1e-3], dtype=torch.float64)
    t_b, alpha_b, _ = Grid.of(_BisectedVP(), grid_ts, grad=True).at_lambda(lam)
    t_c, alpha_c, _ = Grid.of(sd.VPSDE(), grid_ts, grad=True).at_lambda(lam)
    torch.testing.assert_close(t_b, t_c, rtol=1e-14, atol=0)
    for b, c in ((t_b, t_c), (alpha_b, alpha_c)):
        (db,), (dc,) = (torch.autograd.grad(v, lam, retain_graph=True) for v in (b, c))
        torch.testing.assert_close(db, dc, rtol=1e-10, atol=0)
