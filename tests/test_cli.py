import argparse
import json
import subprocess
import sys

import torch

from scoresde import bench
from scoresde.cli import build_parser, main


def test_sample_command_writes_samples_and_plot(tmp_path, capsys):
    assert main(["sample", "--problem", "bimodal1d", "--sde", "edm", "--solver", "dpm++2m", "--steps", "8",
                 "--n", "300", "--out", str(tmp_path)]) == 0
    saved = torch.load(tmp_path / "bimodal1d_edm_dpm++2m_8.pt", weights_only=True)
    assert saved["x"].shape == (300, 1) and saved["nfe"] == 8
    assert (tmp_path / "bimodal1d_edm_dpm++2m_8.png").stat().st_size > 1000
    assert "nfe=8" in capsys.readouterr().out


def test_bad_input_is_one_clear_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "scoresde", "sample", "--steps", "0", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip() == "scoresde: error: steps must be an integer >= 1; got 0"
    run = subprocess.run([sys.executable, "-m", "scoresde", "sample", "--solver", "nope"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "invalid choice: 'nope'" in run.stderr


def test_sdes_table(capsys):
    assert main(["sdes", "--sde", "vp", "--rows", "2"]) == 0
    assert "VPSDE(beta_min=0.1, beta_max=20)" in capsys.readouterr().out


def test_python_m_scoresde_runs_the_cli_and_help_shows_defaults():
    run = subprocess.run([sys.executable, "-m", "scoresde", "--help"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    for command in ("sample", "sdes", "nll", "bench", "schedule"):
        assert command in run.stdout
    run = subprocess.run([sys.executable, "-m", "scoresde", "sample", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "--samples SAMPLES, --n SAMPLES" in run.stdout
    assert "(default: 2000)" in run.stdout and "(default: float32)" in run.stdout
    assert "euler-maruyama" in run.stdout and "euler_maruyama" not in run.stdout  # canonical names only
    # every flag with a default says it (None / False defaults are explained in the help text)
    for parser in _parsers(build_parser()):
        for action in parser._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert action.help and "%(default)" not in action.help, (parser.prog, action.option_strings)
                assert "(default: " in parser.formatter_class(parser.prog)._get_help_string(action)


def _parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_dtype_defaults_to_float32_everywhere():
    parser = build_parser()
    for argv in (["sample"], ["nll"], ["bench"]):
        assert parser.parse_args(argv).dtype == "float32"


def test_old_flags_are_aliases(tmp_path, capsys, monkeypatch):
    """--n is --samples (sample, nll); bench --digits-ckpt is bench --ckpt: it adds problem 'digits'."""
    outputs = []
    for flag in ("--n", "--samples"):
        assert main(["sample", "--problem", "bimodal1d", "--solver", "ddim", "--steps", "4", flag, "64",
                     "--out", str(tmp_path / flag.strip("-"))]) == 0
        outputs.append(torch.load(tmp_path / flag.strip("-") / "bimodal1d_vp_ddim_4.pt", weights_only=True)["x"])
    assert outputs[0].shape == (64, 1) and torch.equal(*outputs)
    parser = build_parser()
    assert parser.parse_args(["nll", "--n", "7"]).samples == parser.parse_args(["nll", "--samples", "7"]).samples == 7
    # an old solver name is accepted where --solver takes a choice (--help lists the canonical ones)
    assert main(["sample", "--problem", "bimodal1d", "--solver", "euler_maruyama", "--steps", "4", "--samples", "16",
                 "--out", str(tmp_path)]) == 0

    calls = []
    monkeypatch.setattr(bench, "run_benchmark", lambda **kwargs: calls.append(kwargs))
    for flag in ("--digits-ckpt", "--ckpt"):
        assert main(["bench", "--sdes", "vp", flag, "model.pt", "--no-progress"]) == 0
    assert calls[0] == calls[1]
    assert calls[0]["digits_checkpoint"] == "model.pt"
    assert calls[0]["problems"] == [f"{p}/vp" for p in bench.ANALYTIC] + ["digits"]
    monkeypatch.undo()
    assert main(["bench", "--problems", "digits", "--digits-ckpt", str(tmp_path / "missing.pt"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_ints_are_checked_in_one_line(capsys):
    assert main(["sdes", "--rows", "0"]) == 2
    assert capsys.readouterr().err.strip() == "scoresde: error: rows must be an integer >= 1; got 0"
    assert main(["bench", "--samples", "1", "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == "scoresde: error: samples must be an integer >= 2; got 1"
    assert main(["nll", "--probes", "0"]) == 2
    assert "probes must be an integer >= 1; got 0" in capsys.readouterr().err


def test_sample_options_refuse_sample_keywords(tmp_path, capsys):
    """--options holds solver options only: sample()'s own arguments (t_end, steps, ...) are
    refused by name, so a JSON key can never silently override a flag."""
    for key, value in (("t_end", 0.5), ("steps", 3), ("generator", None)):
        assert main(["sample", "--options", json.dumps({key: value}), "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("scoresde: error: --options must be solver options, not arguments of sample() itself")
        assert f"({key})" in err
    assert main(["sample", "--options", "[3]", "--out", str(tmp_path)]) == 2
    assert "--options must be a JSON object" in capsys.readouterr().err
    assert main(["sample", "--problem", "bimodal1d", "--solver", "dpm++2m", "--steps", "4", "--samples", "16",
                 "--options", '{"lower_order_final": false}', "--out", str(tmp_path)]) == 0


def test_explicit_steps_with_a_schedule_file_reach_sample(tmp_path, capsys):
    """--steps with --schedule-file is passed on (and refused if it is not the file's), never
    silently replaced by the file's step count."""
    path = tmp_path / "sched.json"
    assert main(["schedule", "optimize", "--solver", "ddim", "--nfe", "4", "--calibration", "16", "--max-evals", "4",
                 "--out", str(path)]) == 0
    assert main(["sample", "--schedule-file", str(path), "--steps", "7", "--samples", "16", "--out", str(tmp_path)]) == 2
    assert "steps must be None or this tuned schedule's 4" in capsys.readouterr().err
    assert main(["sample", "--schedule-file", str(path), "--steps", "4", "--samples", "16", "--out", str(tmp_path)]) == 0
    assert "| ddim | steps=4" in capsys.readouterr().out
