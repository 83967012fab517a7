import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

import scoresde as sd

from scoresde import bench
from scoresde.cli import build_parser, main

from _cli import refused as _refused


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
    monkeypatch.chdir(tmp_path)
    # a digits model (checked, with its data set, before the run; read by the (replaced) run)
    unet = sd.nets.UNet(base_channels=8, channel_mults=(1,), groups=4)
    sd.Trainer(sd.ScoreModel(unet, sd.VPSDE()), sd.data.load_data("digits").x[:32], batch_size=16,
               progress=False).save(tmp_path / "model.pt")
    for flag in ("--digits-ckpt", "--ckpt"):
        assert main(["bench", "--sdes", "vp", flag, "model.pt", "--no-progress"]) == 0
    assert calls[0] == calls[1]
    assert calls[0]["checkpoint"] == "model.pt"
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


# --- bad input: one line `scoresde: error: <flag> must be <accepted>; got <given>`, exit 2, before any work


@pytest.fixture
def no_work(monkeypatch):
    """Every command's work replaced by a failure: a refusal must come before any of it."""
    import scoresde.likelihood
    import scoresde.solvers
    import scoresde.tuning

    def work(*args, **kwargs):
        raise AssertionError("the work started before the bad input was refused")

    for module, name in ((scoresde.solvers, "sample"), (bench, "run_benchmark"), (scoresde.tuning, "optimize"),
                         (scoresde.likelihood, "log_likelihood"), (scoresde.likelihood, "bits_per_dim")):
        monkeypatch.setattr(module, name, work)


@pytest.fixture
def files(tmp_path):
    """Bad input files: a plain file, a folder, malformed and wrong-shaped JSON, resume files."""
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "folder").mkdir()
    (tmp_path / "malformed.json").write_text('{"times": [1.0, ')
    (tmp_path / "list.json").write_text("[1, 2]")
    for name, text in (("noconfig", '{"problems": {}, "cells": []}'), ("corrupted", '{"config": {"n": 10'),
                       ("array", "[]")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "accuracy_vs_nfe.json").write_text(text)
    return tmp_path


def test_sample_counts_steps_and_seeds_are_refused_by_name(capsys, no_work, tmp_path):
    out = ["--out", str(tmp_path)]
    for argv, words in [
        (["sample", "--n", "0"], ["samples must be an integer >= 2", "got 0"]),
        (["sample", "--n", "-5"], ["samples must be an integer >= 2", "got -5"]),
        (["sample", "--samples", "1"], ["samples", "got 1"]),
        (["sample", "--samples", "10000001"], ["samples must be an integer <= 10000000", "got 10000001"]),
        (["sample", "--steps", "inf"], ["steps must be an integer >= 1", "got 'inf'"]),
        (["sample", "--steps", "0"], ["steps must be an integer >= 1", "got 0"]),
        (["sample", "--steps", "-3"], ["steps must be an integer >= 1", "got -3"]),
        (["sample", "--steps", "2.5"], ["steps", "got '2.5'"]),
        (["sample", "--steps", "1e9"], ["steps", "got '1e9'"]),
        (["sample", "--steps", "100001"], ["steps must be an integer <= 100000", "got 100001"]),
        # torch would take -1 silently as 2**64 - 1, and 2**64 not at all
        (["sample", "--seed", "-1"], ["seed must be an integer >= 0", "got -1"]),
        (["sample", "--seed", str(2**64)], ["seed must be an integer <= 4294967295", f"got {2**64}"]),
    ]:
        _refused(capsys, argv + out, *words)


def test_unknown_or_absent_devices_are_refused(capsys, no_work, tmp_path):
    absent = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    for command in (["sample", "--out", str(tmp_path)], ["nll"], ["bench", "--out", str(tmp_path), "--no-progress"],
                    ["schedule", "optimize", "--out", str(tmp_path / "s.json")]):
        _refused(capsys, command + ["--device", absent], "--device must be", f"got '{absent}'", "CUDA device")
        _refused(capsys, command + ["--device", "banana"], "--device must be cpu, cuda or cuda:<index>", "got 'banana'")


def test_options_and_schedule_files_are_refused_up_front(capsys, no_work, files):
    out = ["--out", str(files)]
    _refused(capsys, ["sample", "--options", "[1, 2]"] + out, "--options must be a JSON object", "got '[1, 2]'")
    _refused(capsys, ["sample", "--options", "{not json"] + out, "--options", "got '{not json'")
    missing = str(files / "missing.json")
    _refused(capsys, ["sample", "--schedule-file", missing] + out, "--schedule-file must be", repr(missing),
             "does not exist")
    for name in ("malformed.json", "list.json", "afile"):
        path = str(files / name)
        _refused(capsys, ["sample", "--schedule-file", path] + out,
                 "--schedule-file must be a JSON file written by `scoresde schedule optimize`", repr(path))
    _refused(capsys, ["sample", "--schedule-file", str(files / "folder")] + out, "--schedule-file", "is a directory")
    # a tuned grid and a named schedule cannot both set the times
    _refused(capsys, ["sample", "--schedule", "karras", "--schedule-file", missing] + out,
             "--schedule-file", "--schedule")


def test_out_is_checked_before_any_work(capsys, no_work, files):
    afile, under = str(files / "afile"), str(files / "afile" / "sub")
    for command in (["sample"], ["bench", "--no-progress"]):
        _refused(capsys, command + ["--out", afile], "--out must be a folder", repr(afile), "it is a file")
        _refused(capsys, command + ["--out", under], "--out must be a folder", repr(under), f"{afile} is a file")
    folder, lost = str(files / "folder"), str(files / "missing" / "s.json")
    _refused(capsys, ["schedule", "optimize", "--out", folder], "--out must be a file path", repr(folder),
             "it is a folder")
    _refused(capsys, ["schedule", "optimize", "--out", lost], "--out must be a file path", repr(lost),
             f"folder {files / 'missing'} does not exist")
    assert not (files / "missing").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes in read-only folders")
def test_out_in_a_read_only_folder_is_refused(capsys, no_work, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        _refused(capsys, ["sample", "--out", str(locked / "run")], "--out", "cannot write in")
        _refused(capsys, ["schedule", "optimize", "--out", str(locked / "s.json")], "--out", "cannot write in")
    finally:
        locked.chmod(0o700)


def test_nll_and_sdes_counts_and_checkpoint_paths(capsys, no_work, files):
    _refused(capsys, ["nll", "--samples", "0"], "samples must be an integer >= 1", "got 0")
    _refused(capsys, ["nll", "--n", "0"], "samples must be an integer >= 1", "got 0")
    _refused(capsys, ["nll", "--seed", "-1"], "seed", "got -1")
    _refused(capsys, ["sdes", "--rows", "-1"], "rows must be an integer >= 1", "got -1")
    _refused(capsys, ["sdes", "--rows", "99999999999"], "rows must be an integer <= 10000", "got 99999999999")
    folder = str(files / "folder")
    line = _refused(capsys, ["nll", "--ckpt", folder], "--ckpt must be a readable Trainer checkpoint file",
                    repr(folder), "it is a directory")
    assert "does not exist" not in line
    missing = str(files / "missing.pt")
    _refused(capsys, ["nll", "--ckpt", missing], "--ckpt", repr(missing), "does not exist")


def test_bench_inputs_and_resume_files_are_refused_up_front(capsys, no_work, files):
    def bench_args(*extra):
        return ["bench", "--problems", "ring2d", "--sdes", "vp", "--solvers", "euler", "--no-progress", *extra]

    _refused(capsys, bench_args("--nfe", "0", "--out", str(files)), "nfe must be an integer >= 1", "got 0")
    _refused(capsys, bench_args("--nfe", "5", "-3", "--out", str(files)), "nfe", "got -3")
    _refused(capsys, bench_args("--seed", "-1", "--out", str(files)), "seed", "got -1")
    _refused(capsys, bench_args("--tolerances", "9", "--out", str(files)), "tolerances must be an integer <= 4", "got 9")
    _refused(capsys, bench_args("--optimize", "--calibration", "3", "--out", str(files)),
             "calibration must be an integer >= 16", "got 3")
    noconfig = str(files / "noconfig" / "accuracy_vs_nfe.json")
    _refused(capsys, bench_args("--resume", "--out", str(files / "noconfig")), "--resume must be", repr(noconfig),
             "no valid config")
    corrupted = str(files / "corrupted" / "accuracy_vs_nfe.json")
    _refused(capsys, bench_args("--resume", "--out", str(files / "corrupted")), "--resume", repr(corrupted),
             "cannot be parsed")
    _refused(capsys, bench_args("--resume", "--out", str(files / "array")), "--resume", "no valid config, problems, cells")
    # every problem is checked before the first one runs, and a checkpoint is never ignored
    out = ["--out", str(files), "--no-progress"]
    _refused(capsys, ["bench", "--problems", "ring2d/vp", "nope/vp"] + out, "--problems must be one of", "got 'nope'")
    _refused(capsys, ["bench", "--problems", "ring2d/xx"] + out, "--problems ring2d/xx must be one of", "got 'xx'")
    _refused(capsys, ["bench", "--problems", "ring2d/vp", "digits"] + out, "--ckpt must be", "got None")
    _refused(capsys, ["bench", "--problems", "ring2d/vp", "--ckpt", str(files / "afile")] + out,
             "--problems must be a list with digits", "got ['ring2d/vp']")
    _refused(capsys, ["bench", "--problems", "digits", "--ckpt", str(files / "folder")] + out, "--ckpt",
             "is a directory")


def test_schedule_optimize_counts(capsys, no_work, tmp_path):
    out = ["--out", str(tmp_path / "s.json")]
    _refused(capsys, ["schedule", "optimize", "--nfe", "0"] + out, "nfe must be an integer >= 1", "got 0")
    _refused(capsys, ["schedule", "optimize", "--nfe", "5000"] + out, "nfe must be an integer <= 1000", "got 5000")
    _refused(capsys, ["schedule", "optimize", "--calibration", "4"] + out, "calibration must be an integer >= 16",
             "got 4")
    _refused(capsys, ["schedule", "optimize", "--max-evals", "0"] + out, "max_evals", "got 0")
    _refused(capsys, ["schedule", "optimize", "--seed", "-1"] + out, "seed", "got -1")


def test_usage_errors_are_one_line_too(capsys):
    _refused(capsys, ["sample", "--solver", "nope"], "argument --solver: invalid choice: 'nope'")
    _refused(capsys, ["sample", "--bogus"], "unrecognized arguments: --bogus")
    _refused(capsys, ["sample", "--steps"], "argument --steps: expected one argument")
    _refused(capsys, ["nope"], "invalid choice: 'nope'")
    _refused(capsys, ["schedule"], "required: action")


def test_adaptive_solvers_are_not_given_a_step_count(tmp_path, capsys):
    """Without --steps an adaptive solver chooses its own steps; none is claimed in the output."""
    assert main(["sample", "--problem", "bimodal1d", "--solver", "torchdiffeq", "--samples", "16",
                 "--out", str(tmp_path)]) == 0
    assert "| torchdiffeq | steps=adaptive" in capsys.readouterr().out
    assert (tmp_path / "bimodal1d_vp_torchdiffeq_adaptive.pt").exists()


def test_debug_shows_the_traceback_instead(capsys):
    for argv in (["--debug", "sdes", "--rows", "0"], ["sdes", "--rows", "0", "--debug"]):
        with pytest.raises(ValueError, match="rows must be an integer >= 1; got 0"):
            main(argv)
    run = subprocess.run([sys.executable, "-m", "scoresde", "sample", "--n", "0"], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr == "scoresde: error: samples must be an integer >= 2; got 0\n"
    run = subprocess.run([sys.executable, "-m", "scoresde", "--debug", "sample", "--n", "0"],
                         capture_output=True, text=True)
    assert run.returncode == 1 and "Traceback" in run.stderr and "samples must be" in run.stderr


def test_sample_from_a_checkpoint_with_labels_and_guidance(tmp_path, capsys):
    """`sample --ckpt`: a trained class-conditional model, guided to a label; .pt, .npz, picture."""
    import numpy as np

    from scoresde.cli import main

    torch.manual_seed(0)
    mix = sd.data.GaussianMixture.ring(modes=4)
    x, labels = mix.sample(256, torch.Generator().manual_seed(0), return_components=True)
    model = sd.ScoreModel(sd.nets.MLP(2, hidden=32, depth=2, num_classes=4), sd.VPSDE(), prediction="eps")
    sd.Trainer(model, (x, labels), batch_size=32, lr=1e-2, label_dropout=0.2, seed=1, progress=False,
               ckpt_dir=tmp_path).fit(5)
    ckpt = str(tmp_path / "checkpoint.pt")
    out = tmp_path / "samples"
    assert main(["sample", "--ckpt", ckpt, "--solver", "ddim", "--steps", "4", "--samples", "20", "--label", "2",
                 "--guidance-scale", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "label=2 scale=3" in printed and "nfe=4," in printed
    saved = torch.load(out / "checkpoint_ddim_4_label2.pt", weights_only=True)
    npz = np.load(out / "checkpoint_ddim_4_label2.npz")
    assert saved["x"].shape == (20, 2) and saved["nfe"] == 4 and np.array_equal(npz["x"], saved["x"].double().numpy())
    assert (out / "checkpoint_ddim_4_label2.png").stat().st_size > 0
    # the same model, seed and solver without guidance give other samples; a bad label is refused
    assert main(["sample", "--ckpt", ckpt, "--solver", "ddim", "--steps", "4", "--samples", "20",
                 "--out", str(out)]) == 0
    assert not torch.equal(torch.load(out / "checkpoint_ddim_4.pt", weights_only=True)["x"], saved["x"])
    capsys.readouterr()
    assert main(["sample", "--ckpt", ckpt, "--label", "7", "--samples", "4", "--out", str(out)]) == 2
    assert "label must be an integer in [0, 3]; got 7" in capsys.readouterr().err
    assert main(["sample", "--guidance-scale", "2", "--samples", "4", "--out", str(out)]) == 2
    assert "--label/--guidance-scale must be used with --ckpt" in capsys.readouterr().err


def test_schedule_optimize_for_a_checkpoint_then_sample_with_it(tmp_path, capsys):
    from scoresde.cli import main

    torch.manual_seed(0)
    x = sd.data.GaussianMixture.ring(modes=4).sample(128, torch.Generator().manual_seed(0))
    sd.Trainer(sd.ScoreModel(sd.nets.MLP(2, hidden=32, depth=2), sd.VPSDE()), x, batch_size=32, seed=1,
               progress=False, ckpt_dir=tmp_path).fit(3)
    ckpt, path = str(tmp_path / "checkpoint.pt"), tmp_path / "sched.json"
    assert main(["schedule", "optimize", "--ckpt", ckpt, "--solver", "ddim", "--nfe", "4", "--calibration", "16",
                 "--max-evals", "6", "--out", str(path)]) == 0
    tuned = sd.tuning.OptimizedSchedule.load(path)
    assert (tuned.solver, tuned.steps, tuned.calibration) == ("ddim", 4, 16) and tuned.loss <= tuned.loss_start
    assert main(["sample", "--ckpt", ckpt, "--schedule-file", str(path), "--samples", "8", "--out", str(tmp_path)]) == 0
    saved = torch.load(tmp_path / "checkpoint_ddim_4.pt", weights_only=True)
    assert torch.equal(saved["times"], tuned.times) and saved["nfe"] == 4
