import subprocess
import sys

import torch

from scoresde.cli import main


def test_sample_command_writes_samples_and_plot(tmp_path, capsys):
    assert main(["sample", "--problem", "bimodal1d", "--sde", "edm", "--solver", "dpm++2m", "--steps", "8",
                 "--n", "300", "--out", str(tmp_path)]) == 0
    saved = torch.load(tmp_path / "bimodal1d_edm_dpm++2m_8.pt", weights_only=True)
    assert saved["x"].shape == (300, 1) and saved["nfe"] == 8
    assert (tmp_path / "bimodal1d_edm_dpm++2m_8.png").stat().st_size > 1000
    assert "nfe=8" in capsys.readouterr().out


def test_bad_input_is_one_clear_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "scoresde.cli", "sample", "--steps", "0", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip() == "scoresde: error: steps must be an integer >= 1; got 0"
    run = subprocess.run([sys.executable, "-m", "scoresde.cli", "sample", "--solver", "nope"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "invalid choice: 'nope'" in run.stderr


def test_sdes_table(capsys):
    assert main(["sdes", "--sde", "vp", "--rows", "2"]) == 0
    assert "VPSDE(beta_min=0.1, beta_max=20)" in capsys.readouterr().out
