"""The jobs relaunch themselves with tcmalloc where it is installed, and compute the same numbers bit for bit."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from darts_sg.utils import allocator
from darts_sg.utils.allocator import ALLOCATOR_ENV, allocator_note, find_tcmalloc, relaunch_env
from darts_sg.utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
LIB = "libtcmalloc_minimal.so.4"

needs_tcmalloc = pytest.mark.skipif(find_tcmalloc() is None, reason="tcmalloc is not installed (scripts/setup.sh installs it)")


def test_relaunch_env_preloads_tcmalloc_once():
    env = relaunch_env({"PATH": "/bin"}, LIB)
    assert env["LD_PRELOAD"] == LIB and env["PATH"] == "/bin"
    assert relaunch_env(env, LIB) is None  # relaunched already: never a loop
    assert relaunch_env({"LD_PRELOAD": "libfoo.so"}, LIB)["LD_PRELOAD"] == f"{LIB}:libfoo.so"  # the user's preloads kept


@pytest.mark.parametrize(
    "environ, library",
    [({ALLOCATOR_ENV: "system"}, LIB), ({}, None), ({"LD_PRELOAD": f"/usr/lib/{LIB}"}, LIB)],
    ids=["asked-for-system", "not-installed", "already-preloaded"],
)
def test_no_relaunch(environ, library):
    assert relaunch_env(environ, library) is None


def test_unknown_choice_is_a_one_line_error():
    with pytest.raises(UserError, match=f"{ALLOCATOR_ENV}='jemalloc' is not a choice; use auto"):
        relaunch_env({ALLOCATOR_ENV: "jemalloc"}, LIB)


def test_a_cpu_job_on_glibc_malloc_says_how_to_get_tcmalloc(monkeypatch):
    monkeypatch.setattr(allocator, "loaded_allocator", lambda: "system")
    assert "apt-get install libtcmalloc-minimal4" in allocator_note("cpu", {})
    assert allocator_note("cpu", {ALLOCATOR_ENV: "system"}) is None  # asked for
    assert allocator_note("cuda", {}) is None
    monkeypatch.setattr(allocator, "loaded_allocator", lambda: "tcmalloc")
    assert allocator_note("cpu", {}) is None


# A relaunched process: which allocator it runs under, and a fingerprint of a supernet step (sgblock
# space, the CPU policy): the loss and every gradient, as bytes.
STEP = """
import hashlib, torch
from darts_sg.utils.allocator import loaded_allocator, relaunch_with_tcmalloc
relaunch_with_tcmalloc()
from darts_sg import build_supernet
from darts_sg.speed.accelerate import accelerate, device_policy
torch.manual_seed(0)  # both runs on torch's default threads
model = accelerate(build_supernet("sgblock", C=8, layers=3), torch.device("cpu"), device_policy("cpu"))
x = torch.randn(8, 3, 16, 16).contiguous(memory_format=torch.channels_last)
loss = torch.nn.functional.cross_entropy(model(x), torch.arange(8) % 10)
loss.backward()
digest = hashlib.sha256(loss.detach().numpy().tobytes())
for p in list(model.weights()) + list(model.alphas()):
    digest.update(p.grad.numpy().tobytes())
print(loaded_allocator(), digest.hexdigest())
"""


def _fresh_env(choice: str) -> dict[str, str]:
    """This environment as a shell gives it to a new command: nothing preloaded (scripts/test.sh preloads tcmalloc)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "DARTS_SG_RELAUNCHED")}
    return {**env, ALLOCATOR_ENV: choice}


def _run_step(choice: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", STEP], env=_fresh_env(choice), capture_output=True, text=True,
                            timeout=300, cwd=ROOT)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@needs_tcmalloc
def test_relaunched_under_tcmalloc_the_step_is_bit_identical():
    allocator, fingerprint = _run_step("auto")
    system, system_fingerprint = _run_step("system")
    assert (allocator, system) == ("tcmalloc", "system")
    assert fingerprint == system_fingerprint


@needs_tcmalloc
def test_the_entry_points_relaunch_and_record_the_allocator(tmp_path, planted_data_root):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "augment.py"), "--preset", "smoke", "--genotype", "darts_v2", "--data-root",
         str(planted_data_root), "--train-subset", "0", "--test-subset", "0", "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=_fresh_env("auto"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "config.json").read_text())["allocator"] == "tcmalloc"


def test_the_entry_points_relaunch_before_importing_torch():
    """The relaunch re-executes the process: what was imported before it is paid for twice at every start."""
    loaded = "import sys, darts_sg.entry; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'click', 'numpy'}))"
    result = subprocess.run([sys.executable, "-c", loaded], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    # a bad choice of allocator is refused there, as one line
    for script in ("search.py", "augment.py"):
        refused = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, timeout=300,
                                 env={**os.environ, ALLOCATOR_ENV: "jemalloc"})  # fmt: skip
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert f"{ALLOCATOR_ENV}='jemalloc' is not a choice" in refused.stderr
