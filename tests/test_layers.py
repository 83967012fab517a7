"""The layers of DESIGN.md, checked by import-linter's contract in pyproject.toml: the library
keeps it, and the contract itself catches an upward import."""
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("importlinter")


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    # the package found first on the path is the one in `cwd`
    return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; "
                           "sys.exit(c())", "--config", str(cwd / "pyproject.toml"), "--no-cache"],
                          cwd=cwd, env={"PYTHONPATH": str(cwd), "PATH": ""}, capture_output=True, text=True,
                          timeout=120)


def test_the_library_keeps_its_layers():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """A copy of the package where the SDE module (layer 2) imports the solvers (layer 5)."""
    shutil.copytree(ROOT / "scoresde", tmp_path / "scoresde", ignore=shutil.ignore_patterns("__pycache__"))
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert config["contracts"][0]["type"] == "layers"
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    sde = tmp_path / "scoresde" / "sde" / "base.py"
    sde.write_text(sde.read_text() + "\n\ndef _upward():\n    from .. import solvers  # noqa: F401\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "scoresde.sde.base -> scoresde.solvers" in result.stdout, result.stdout
