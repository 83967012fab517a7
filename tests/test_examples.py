"""Every example in examples/ runs in --quick mode and writes its figures and its table.

Each script runs as a user would run it: a subprocess, single-threaded, with --out in a fresh
folder. An example that stops because an *optional* package is not installed (e.g. diffusers)
is skipped with the package's name; a missing module of scoresde itself is a failure.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
# files starting with "_" are helpers shared by the examples, not examples
EXAMPLES = sorted(p for p in EXAMPLES_DIR.glob("*.py") if not p.name.startswith("_"))
TIMEOUT_S = 300


def missing_optional_package(stderr: str):
    """The top-level package named by a ModuleNotFoundError in `stderr`, if it is truly not
    installed and is not scoresde itself; else None."""
    found = re.findall(r"(?:ModuleNotFoundError|ImportError): No module named '([\w.]+)'", stderr)
    if not found:
        return None
    top = found[-1].split(".")[0]
    if top == "scoresde" or importlib.util.find_spec(top) is not None:
        return None
    return top


def test_missing_optional_package_is_read_from_the_traceback():
    assert missing_optional_package("ModuleNotFoundError: No module named 'surely_not_installed_pkg'") == \
        "surely_not_installed_pkg"
    assert missing_optional_package("ModuleNotFoundError: No module named 'scoresde.nowhere'") is None  # a bug
    assert missing_optional_package("ModuleNotFoundError: No module named 'torch.nowhere'") is None  # installed
    assert missing_optional_package("ValueError: bad") is None


def test_examples_are_found():
    assert len(EXAMPLES) >= 4, f"expected the examples in {EXAMPLES_DIR}; found {[p.name for p in EXAMPLES]}"


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_quick_and_writes_figures_and_table(script: Path, tmp_path: Path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)], cwd=EXAMPLES_DIR.parent,
                          env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    if proc.returncode != 0:
        package = missing_optional_package(proc.stderr)
        if package is not None:
            pytest.skip(f"{script.name} needs the optional package {package!r}, which is not installed")
    assert proc.returncode == 0, f"{script.name} exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    pngs = [p for p in written if p.suffix == ".png"]
    tables = [p for p in written if p.suffix in (".md", ".json")]
    assert pngs, f"{script.name} wrote no PNG into --out; it wrote {[p.name for p in written]}"
    assert all(p.stat().st_size > 1000 for p in pngs), f"{script.name} wrote an empty-looking PNG"
    assert tables, f"{script.name} wrote no table (.md or .json) into --out; it wrote {[p.name for p in written]}"


def test_ddpm_grid_makes_ancestral_the_ddpm_chain():
    """discrete_vs_continuous.py teaches that `ancestral` on `ddpm_grid` *is* Ho et al.'s reverse
    chain (posterior variance beta_tilde, last step to the posterior mean): check it against the
    chain written out from the betas, on an exact-score model, with shared noise."""
    import importlib

    import torch

    import scoresde as sd

    sys.path.insert(0, str(EXAMPLES_DIR))
    try:
        ddpm_grid = importlib.import_module("discrete_vs_continuous").ddpm_grid
    finally:
        sys.path.remove(str(EXAMPLES_DIR))
    sde, N = sd.VPSDE(), 100
    model = sd.data.GaussianMixture.ring().score_model(sde)
    ts = ddpm_grid(sde, N)
    alphas_cumprod = torch.cumprod(1 - sde.discrete_betas(N), dim=0)  # i = 1..N
    kept = alphas_cumprod[: len(ts) - 1].flip(0)  # the chain's indices below T, descending
    assert torch.allclose(sde.alpha(ts[1:]) ** 2, kept, rtol=1e-9, atol=0)
    assert len(ts) - 1 >= N - 5  # only the few steps whose times lie past T are merged into the first

    gen = torch.Generator().manual_seed(0)
    x_T = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    draws = [torch.randn(64, 2, generator=gen, dtype=torch.float64) for _ in range(len(ts) - 1)]
    it = iter(draws)
    out = sd.sample(model, x_T=x_T, solver="ancestral", schedule=ts, steps=None, final_mean=False, denoise=True,
                    noise_fn=lambda like: next(it))
    assert out.nfe == len(ts)

    # Ho et al. 2020, Algorithm 2, between consecutive grid points (the first from alpha(T)^2)
    abar = torch.cat([sde.alpha(ts[:1]) ** 2, kept]).tolist()
    x = x_T
    for i in range(len(ts) - 1):
        beta = 1 - abar[i] / abar[i + 1]
        eps = model.eps(x, float(ts[i]))
        mean = (x - beta / (1 - abar[i]) ** 0.5 * eps) / (1 - beta) ** 0.5
        x = mean + ((1 - abar[i + 1]) / (1 - abar[i]) * beta) ** 0.5 * draws[i]
    x0 = (x - (1 - abar[-1]) ** 0.5 * model.eps(x, float(ts[-1]))) / abar[-1] ** 0.5
    assert torch.allclose(out.x, x0, rtol=0, atol=1e-9)
