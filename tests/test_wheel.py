"""The built wheel works on its own: installed (not editable) in a fresh virtual environment,
outside the checkout, the README's Python API example and `darts-sg plot darts_v2` run.

The venv sees the system's site-packages (torch is too large to install again), so the test
checks that the wheel's darts_sg, not an editable install, is the one imported.
Deselect with `-m "not wheel"`.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.wheel

ROOT = Path(__file__).resolve().parents[1]


def readme_python_example() -> str:
    """The ```python block of the README's "Python API" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run(args, cwd, timeout=300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A venv holding the wheel built from a clean copy of the sources (no stale build/ folder)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("darts_sg", "genotypes"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-q",
         "-w", base / "dist", source], cwd=base)  # fmt: skip
    (wheel,) = (base / "dist").glob("darts_sg-*.whl")
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", base / "venv"], cwd=base)
    python = base / "venv" / "bin" / "python"
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], cwd=base)
    return base / "venv"


def test_wheel_ships_the_genotype_zoo_and_is_the_darts_sg_imported(venv, tmp_path):
    code = (
        "import darts_sg, darts_sg.zoo\n"
        "from darts_sg.model.genotype import genotype_dir\n"
        "print(darts_sg.__file__); print(genotype_dir())\n"
        "assert darts_sg.load_genotype('darts_v2') == darts_sg.load_genotype('DARTS_V2')\n"
    )
    lines = run([venv / "bin" / "python", "-c", code], cwd=tmp_path).stdout.splitlines()
    installed = str(venv.resolve())
    assert lines[0].startswith(installed), f"imported {lines[0]}, not the wheel in {installed}"
    assert lines[1].startswith(installed) and lines[1].endswith("zoo")


def test_readme_python_example_runs_from_the_wheel(venv, tmp_path):
    example = readme_python_example()
    assert "load_genotype(\"darts_v2\")" in example
    check = "\nassert darts_sg.count_params(net) == 3_825_768\n"
    run([venv / "bin" / "python", "-c", example + check], cwd=tmp_path)


def test_plot_command_of_the_wheel_draws_darts_v2(venv, tmp_path):
    out = run([venv / "bin" / "darts-sg", "plot", "darts_v2", "-o", "cells/v2"], cwd=tmp_path).stdout.split()
    suffix = ".png" if shutil.which("dot") else ".gv"
    assert out == [f"cells/v2_normal{suffix}", f"cells/v2_reduce{suffix}"]
    assert all((tmp_path / name).stat().st_size > 100 for name in out)
