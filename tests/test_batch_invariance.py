"""Batch-invariant noise (`sample(..., seeds=...)`): row i's sample depends on its own seed
alone, whatever the batch it is drawn in, for every registered solver and under torchrun."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import scoresde as sd
from scoresde.data.problems import get_problem

MODEL = get_problem("gmm16d").score_model(sd.VPSDE())
SEEDS = list(range(100, 112))


def _run(solver, seeds, **kwargs):
    steps = {} if sd.solvers.get(solver).adaptive else {"steps": 6}
    return sd.sample(MODEL, shape=(len(seeds), 16), solver=solver, seeds=seeds, **steps, **kwargs).x


@pytest.mark.parametrize("solver", sd.solvers.available())
def test_rows_of_a_small_batch_equal_the_first_rows_of_a_large_one(solver):
    """Rows 0..2 drawn in a batch of 3 equal the first 3 rows of a batch of 12, bit for bit
    (a batch of 3 x 16 values is also below torch's 16-element randn threshold for a row of
    the large batch: every draw is made row by row)."""
    small, large = _run(solver, SEEDS[:3]), _run(solver, SEEDS)
    assert torch.equal(small, large[:3]), solver
    assert not torch.equal(large[0], large[1])  # distinct seeds, distinct rows


def test_seeds_reproduce_and_differ_from_generator_draws():
    assert torch.equal(_run("dpm++2m-sde", SEEDS[:4]), _run("dpm++2m-sde", SEEDS[:4]))
    shuffled = _run("dpm++2m-sde", [SEEDS[1], SEEDS[0]])
    assert torch.equal(shuffled, _run("dpm++2m-sde", SEEDS[:2]).flip(0))  # a row follows its seed


def test_inpainting_noise_is_per_row_too():
    known = torch.zeros(12, 16)
    mask = torch.zeros(16, dtype=torch.bool)
    mask[:4] = True
    large = _run("ancestral", SEEDS, inpaint=(known, mask))
    small = _run("ancestral", SEEDS[:3], inpaint=(known[:3], mask))
    assert torch.equal(small, large[:3]) and bool((large[:, :4] == 0).all())


def test_bad_seeds_are_refused():
    with pytest.raises(ValueError, match=r"seeds must be one seed per batch row \(4\); got '3 seeds'"):
        sd.sample(MODEL, shape=(4, 16), seeds=[1, 2, 3])
    with pytest.raises(ValueError, match=r"seeds\[1\] must be an integer in \[0, .*\]; got -2"):
        sd.sample(MODEL, shape=(2, 16), seeds=[1, -2])
    with pytest.raises(ValueError, match="give generator or seeds"):
        sd.sample(MODEL, shape=(2, 16), seeds=[1, 2], generator=torch.Generator())
    with pytest.raises(ValueError, match="seeds must be a sequence of integer seeds"):
        sd.sample(MODEL, shape=(2, 16), seeds="12")


def test_two_gloo_processes_give_the_single_process_rows(tmp_path):
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tests)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tests / "_seeds_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = torch.load(tmp_path / "sharded.pt", weights_only=True)
    seeds = list(range(200, 210))
    for solver, x in sharded.items():
        assert torch.equal(x, _run(solver, seeds)), solver


def test_batch_coupled_options_are_refused_with_seeds():
    with pytest.raises(ValueError, match="per_sample_step must be True with seeds .*; got False"):
        _run("pc", SEEDS[:2], per_sample_step=False)
