"""Nothing a user types can damage a run (issue 42): every bad input is refused with one line on stderr
and exit code 2, before anything is written; one process per run folder; files honour the umask;
a kill inside an atomic write leaves nothing behind after the next start.

The commands run in this process (the command line's own error handling, `_run_with_clean_errors`)
on the planted data set, except where a second real process is the point (the lock, the kill).
"""

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from darts_sg import cli as cli_module
from darts_sg.cli import FiniteFloatRange, _run_with_clean_errors
from darts_sg.train.engine import fit
from darts_sg.utils.io import atomic_write_text, load_checkpoint, save_checkpoint
from darts_sg.train.rundir import RunDirectory

from fake_job import CountingJob

ROOT = Path(__file__).resolve().parents[1]


def darts_sg(capsys, *args):
    """Run `darts-sg ARGS` in this process as the console script does; return (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        _run_with_clean_errors(cli_module.cli, [str(a) for a in args], prog_name="darts-sg")
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, args, fragment, absent=None):
    """The command exits 2 with one line on stderr holding `fragment` (and not `absent`)."""
    code, out, err = darts_sg(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert "Traceback" not in err
    assert absent is None or absent not in lines[0], err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of `folder` by relative path (the lock file's content is the PID of its last holder: left out)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


SMOKE = ["--preset", "smoke", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, planted_data_root):
    """A finished smoke search run and a finished smoke retraining run, on the planted data."""
    from darts_sg.train.config import AUGMENT_PRESETS, AugmentConfig
    from darts_sg.jobs.augment import run_augment
    from darts_sg.train.config import SEARCH_PRESETS, SearchConfig
    from darts_sg.jobs.search import run_search

    base = tmp_path_factory.mktemp("runs")
    run_search(SearchConfig(**{**SEARCH_PRESETS["smoke"], "data_root": str(planted_data_root)}), base / "search", progress=False)
    run_augment(AugmentConfig(**{**AUGMENT_PRESETS["smoke"], "genotype": "darts_v2", "data_root": str(planted_data_root)}),
                base / "augment", progress=False)  # fmt: skip
    return base


# ----------------------------------------------------------------------------------------- float options


def _float_options():
    """(command, option, value) for every float option of search and augment: NaN, +-inf, and 0 where 0 is out of range."""
    cases = []
    for command in ("search", "augment"):
        for param in cli_module.cli.commands[command].params:
            if isinstance(param.type, click_float_range()):
                assert isinstance(param.type, FiniteFloatRange), f"{command} {param.opts[0]} accepts NaN and infinities"
                values = ["nan", "inf", "-inf", "NaN", "+Infinity"]
                if param.type.min == 0 and param.type.min_open:
                    values.append("0")
                cases += [(command, param.opts[0], value) for value in values]
    return cases


def click_float_range():
    import click

    return click.FloatRange


FLOAT_CASES = _float_options()


def test_the_float_table_covers_every_float_option():
    options = {option for _, option, _ in FLOAT_CASES}
    for expected in ("--grad-clip", "--w-lr", "--alpha-lr", "--sg-ratio", "--log-every", "--lr", "--momentum",
                     "--weight-decay", "--auxiliary-weight", "--drop-path", "--label-smoothing", "--lr-decay"):  # fmt: skip
        assert expected in options


@pytest.mark.parametrize("command, option, value", FLOAT_CASES)
def test_float_options_refuse_nan_infinities_and_zero_out_of_range(capsys, tmp_path, command, option, value):
    genotype = ["--genotype", "darts_v2"] if command == "augment" else []
    refused(capsys, [command, *SMOKE, *genotype, option, value, "--out", tmp_path / "new"], option)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("field", ["w_lr", "alpha_lr", "grad_clip", "w_momentum", "sg_ratio"])
def test_the_python_api_refuses_non_finite_floats_too(field):
    from darts_sg.utils.errors import UserError
    from darts_sg.train.config import SearchConfig

    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(UserError, match=field.replace("_", "-")):
            SearchConfig(**{field: value}).validate()


# ----------------------------------------------------------------------------------------- the table


def _deep_json(tmp_path: Path) -> Path:
    path = tmp_path / "deep.json"
    path.write_text('{"normal": ' + "[" * 100_000 + "]" * 100_000 + "}")
    return path


def _legacy(concat: str) -> str:
    edges = "[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)]"
    return f"Genotype(normal={edges}, normal_concat={concat}, reduce={edges}, reduce_concat=[2])"


def _spoil_checkpoint(run: Path, spoil) -> None:
    state = load_checkpoint(run / "checkpoint.pt")
    spoil(state)
    torch.save(state, run / "checkpoint.pt")


def _grow_first_tensor(state):
    model = state["job"]["model"]
    key = next(k for k, v in model.items() if v.dim() == 4)
    model[key] = torch.zeros(model[key].shape[0] * 2, *model[key].shape[1:])


def _evil(state):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    state["evil"] = Evil()


def _edit_config(run: Path, **changes) -> None:
    config = json.loads((run / "config.json").read_text())
    config.update(changes)
    (run / "config.json").write_text(json.dumps(config))


def _data_with_a_folder(tmp_path: Path, planted: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(planted, root)
    (root / "cifar-10-batches-py" / "data_batch_1").unlink()
    (root / "cifar-10-batches-py" / "data_batch_1").mkdir()
    return root


# (name, run to spoil or None, how to spoil it, the command's arguments, a fragment of the error line).
# In the arguments: RUN is the (spoiled copy of the) run, NEW a fresh --out, DATA the planted data, TMP a scratch folder.
CASES = [
    # 1: a refused command rewrote the run's config
    ("search-resumes-augment-run", "augment", None, ["search", "--resume", "RUN"], "is an augment run, not a search run"),
    ("augment-resumes-search-run", "search", None, ["augment", "--resume", "RUN"], "is a search run, not an augment run"),
    # 2: output paths over run files
    ("export-over-model", "augment", None, ["export", "RUN", "-o", "RUN/model.pt"], "would replace the run's own model.pt"),
    ("export-sidecar-over-config", "augment", None, ["export", "RUN", "-o", "RUN/config"], "would replace the run's own config.json"),
    ("evaluate-json-over-config", "augment", None, ["evaluate", "RUN", "--json", "RUN/config.json"], "would replace the run's own config.json"),
    ("export-to-a-folder", "augment", None, ["export", "RUN", "-o", "RUN/tensorboard"], "is a directory"),
    # 4: range() bounds checked before the list is built
    ("legacy-range-huge", None, None, ["augment", *SMOKE, "--genotype", _legacy("range(2, 1000000000000)"), "--out", "NEW", "--data-root", "DATA"], "a cell has at most"),
    ("legacy-range-large", None, None, ["augment", *SMOKE, "--genotype", _legacy("range(2, 20000000)"), "--out", "NEW", "--data-root", "DATA"], "a cell has at most"),
    # 5: integers out of range
    ("seed-beyond-64-bits", None, None, ["search", *SMOKE, "--seed", "18446744073709551616", "--out", "NEW"], "--seed"),
    # 6: tracebacks before
    ("genotype-is-a-checkpoint", "augment", None, ["augment", *SMOKE, "--genotype", "RUN/checkpoint.pt", "--out", "NEW", "--data-root", "DATA"], "not a genotype file"),
    ("genotype-nested-deep", None, None, ["augment", *SMOKE, "--genotype", "DEEP", "--out", "NEW", "--data-root", "DATA"], "nested too deeply"),
    ("checkpoint-of-other-sizes", "search", _grow_first_tensor, ["search", "--resume", "RUN"], "does not fit this run"),
    ("checkpoint-without-job", "search", lambda s: s.pop("job"), ["search", "--resume", "RUN"], "does not fit this run (it lacks 'job')"),
    ("augment-checkpoint-of-other-sizes", "augment", _grow_first_tensor, ["augment", "--resume", "RUN"], "does not fit this run"),
    ("config-with-wrong-types", "search", "config:epochs", ["search", "--resume", "RUN"], "epochs must be int"),
    ("config-with-nan", "search", "config:w_lr", ["search", "--resume", "RUN"], "--w-lr must be a finite number"),
    ("config-not-an-object", "search", "config:list", ["search", "--resume", "RUN"], "holds no JSON object"),
    ("data-batch-is-a-folder", None, None, ["search", *SMOKE, "--out", "NEW", "--data-root", "FOLDERDATA"], "is a folder, not a batch file"),
    ("augment-one-layer", None, None, ["augment", *SMOKE, "--genotype", "darts_v2", "--layers", "1", "--out", "NEW", "--data-root", "DATA"], "--layers 2 or more"),
    ("compare-data-root-override", None, None, ["compare", "--preset", "smoke", "--search-opt", "data_root=X", "--out", "NEW"], "give it as --data-root"),
    ("compare-nan-override", None, None, ["compare", "--preset", "smoke", "--augment-opt", "lr=nan", "--out", "NEW"], "a finite number"),
    ("compare-no-reference-seed", None, None, ["compare", "--preset", "smoke", "--reference-seeds", ",", "--out", "NEW"], "give at least one integer"),
    ("plot-under-a-file", None, None, ["plot", "darts_v2", "-o", "TMP/file/x"], "cannot create the folder"),
    ("export-under-a-file", "augment", None, ["export", "RUN", "-o", "TMP/file/x.pt"], "is a file, not a folder"),
    ("evaluate-json-under-a-file", "augment", None, ["evaluate", "RUN", "--json", "TMP/file/x.json", "--data-root", "DATA"], "is a file, not a folder"),
    ("init-channels-huge", None, None, ["search", *SMOKE, "--init-channels", "100000", "--out", "NEW"], "--init-channels must be at most"),
    ("nodes-400", None, None, ["search", *SMOKE, "--nodes", "400", "--out", "NEW"], "--nodes"),
    ("run-folder-is-a-file", None, None, ["search", *SMOKE, "--out", "TMP/file"], "is a file"),
    ("resume-a-folder-without-run", None, None, ["search", "--resume", "TMP"], "holds no run to resume"),
    # 11: smaller
    ("train-subset-beyond-the-data", None, None, ["augment", *SMOKE, "--genotype", "darts_v2", "--train-subset", "10000000", "--out", "NEW"], "larger than the 50,000 images"),
    ("unsafe-checkpoint", "search", _evil, ["search", "--resume", "RUN"], "cannot be loaded safely"),
]  # fmt: skip


@pytest.mark.parametrize("name, base, spoil, args, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, runs, planted_data_root, name, base, spoil, args, fragment):
    (tmp_path / "file").write_text("a file, not a folder")
    run = Path(shutil.copytree(runs / base, tmp_path / "run")) if base else None
    if isinstance(spoil, str):
        field = spoil.split(":")[1]
        if field == "list":
            (run / "config.json").write_text("[1, 2]")
        else:
            _edit_config(run, **{field: {"epochs": "3", "w_lr": math.nan}[field]})
    elif spoil is not None:
        _spoil_checkpoint(run, spoil)
    places = {"RUN": str(run), "NEW": str(tmp_path / "new"), "DATA": str(planted_data_root), "TMP": str(tmp_path)}
    if "DEEP" in args:
        places["DEEP"] = str(_deep_json(tmp_path))
    if "FOLDERDATA" in args:
        places["FOLDERDATA"] = str(_data_with_a_folder(tmp_path, planted_data_root))
    args = [next((arg.replace(k, v, 1) for k, v in places.items() if arg.startswith(k)), arg) for arg in args]
    before = snapshot(run) if run else None
    line = refused(capsys, args, fragment, absent="weights_only")
    assert "(shown above)" not in line
    if run:
        assert snapshot(run) == before, "a refused command changed the run folder"
    assert not (tmp_path / "new").exists(), "a refused command left a run folder"
    assert (tmp_path / "file").read_text() == "a file, not a folder"


def test_refused_resume_leaves_the_config_byte_for_byte(capsys, tmp_path, runs):
    run = Path(shutil.copytree(runs / "augment", tmp_path / "run"))
    before = (run / "config.json").read_bytes()
    refused(capsys, ["search", "--resume", run], "is an augment run")
    assert (run / "config.json").read_bytes() == before
    code, out, err = darts_sg(capsys, "export", run, "-o", tmp_path / "model.ts")  # the run still works
    assert code == 0, err


def test_evaluate_json_into_a_new_folder_is_written(capsys, tmp_path, runs, planted_data_root):
    target = tmp_path / "missing" / "x.json"
    code, out, err = darts_sg(capsys, "evaluate", runs / "augment", "--json", target, "--data-root", planted_data_root)
    assert code == 0, err
    assert json.loads(target.read_text())["images"] == 64


def test_a_failed_start_leaves_nothing_and_the_same_command_then_works(capsys, tmp_path, planted_data_root):
    out = tmp_path / "deep" / "run"
    bad_data = _data_with_a_folder(tmp_path, planted_data_root)
    args = ["search", *SMOKE, "--out", out]
    refused(capsys, [*args, "--data-root", bad_data], "is a folder")
    assert not (tmp_path / "deep").exists()
    code, _, err = darts_sg(capsys, *args, "--data-root", planted_data_root)
    assert code == 0, err


def test_a_run_that_fails_before_its_first_checkpoint_is_removed(capsys, tmp_path, planted_data_root):
    """A NaN loss in the first epoch, after config.json was written: the folder goes, as if never started."""
    out = tmp_path / "run"
    code, _, err = darts_sg(capsys, "augment", *SMOKE, "--genotype", "darts_v2", "--lr", "1e30", "--grad-clip", "0",
                            "--out", out, "--data-root", planted_data_root)  # fmt: skip
    assert code == 1 and "the training loss became" in err, err
    assert not out.exists()


def test_compare_help_describes_every_preset(capsys):
    code, out, _ = darts_sg(capsys, "compare", "--help")
    assert code == 0
    for preset in ("`paper`", "`medium`", "`quick`", "`smoke`"):
        assert preset in " ".join(out.split())


def test_claimed_units_are_reported_as_running_elsewhere(tmp_path):
    from darts_sg.experiment.parallel import claimed_elsewhere, unit_claim
    from darts_sg.experiment.plan import Unit

    units = [Unit("searched", "darts", 0), Unit("searched", "darts", 1)]
    with unit_claim(tmp_path, units[0]) as claimed:
        assert claimed
        assert claimed_elsewhere(tmp_path, units) == [units[0]]
    assert claimed_elsewhere(tmp_path, units) == []


# ----------------------------------------------------------------------------------------- one process per run


SLOW_SEARCH = [sys.executable, str(ROOT / "search.py"), *SMOKE, "--epochs", "200", "--checkpoint-every", "1"]


def test_a_second_process_on_a_running_run_is_refused_naming_the_holder(capsys, tmp_path, planted_data_root):
    out = tmp_path / "run"
    proc = subprocess.Popen([*SLOW_SEARCH, "--out", str(out), "--data-root", str(planted_data_root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.time() + 120
        while not (out / "metrics.jsonl").exists():  # an epoch done: the run is well under way
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "the first run did not start"
            time.sleep(0.1)
        metrics = (out / "metrics.jsonl").read_bytes()
        config = (out / "config.json").read_bytes()
        line = refused(capsys, ["search", "--resume", out, "--no-progress"], f"in use by another process (PID {proc.pid})")
        assert "wait for it to finish" in line
        refused(capsys, ["search", *SMOKE, "--out", out], "already holds a run")
        assert (out / "config.json").read_bytes() == config
        assert (out / "metrics.jsonl").read_bytes().startswith(metrics)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    with RunDirectory(out).session(resume=True):  # the lock went with its process
        pass
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, len(epochs) + 1))  # one writer: every epoch once


# ----------------------------------------------------------------------------------------- files


KILL_INSIDE_ATOMIC_WRITE = textwrap.dedent("""
    import os, signal, sys
    import darts_sg.utils.io as io
    def killed(fd):
        os.kill(os.getpid(), signal.SIGKILL)
    io.os.fsync = killed
    io.atomic_write_bytes(sys.argv[1], b"x" * 100_000)
""")


def test_a_kill_inside_atomic_write_leaves_no_temporary_file_after_the_next_start(capsys, tmp_path, runs):
    run = Path(shutil.copytree(runs / "search", tmp_path / "run"))
    checkpoint = (run / "checkpoint.pt").read_bytes()
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", KILL_INSIDE_ATOMIC_WRITE, str(run / "checkpoint.pt")],
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)  # fmt: skip
        assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(list(run.glob(".checkpoint.pt.*.tmp"))) == 2
    assert (run / "checkpoint.pt").read_bytes() == checkpoint
    code, _, err = darts_sg(capsys, "search", "--resume", run, "--no-progress")
    assert code == 0, err
    assert not [p for p in run.rglob("*.tmp")]
    assert (run / "checkpoint.pt").read_bytes() == checkpoint  # the run had finished: nothing to train


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_honour_the_umask(tmp_path, umask):
    from darts_sg.utils.io import append_jsonl, file_lock

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        save_checkpoint(tmp_path / "c.pt", {"x": torch.zeros(1)})
        append_jsonl(tmp_path / "m.jsonl", {"epoch": 1})
        with file_lock(tmp_path / ".lock", wait=False):
            pass
    finally:
        os.umask(old)
    for name in ("a.json", "c.pt", "m.jsonl", ".lock"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_a_full_disk_is_one_line_and_keeps_the_previous_file(capsys, tmp_path, runs, monkeypatch):
    import darts_sg.utils.io

    run = Path(shutil.copytree(runs / "augment", tmp_path / "run"))
    before = (run / "checkpoint.pt").read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(darts_sg.utils.io.os, "fsync", no_space)
    from darts_sg.utils.errors import UserError

    with pytest.raises(UserError, match="No space left on device.*previous version of the file is intact"):
        save_checkpoint(run / "checkpoint.pt", load_checkpoint(run / "checkpoint.pt"))
    refused(capsys, ["export", run, "-o", tmp_path / "model.ts"], "No space left on device")
    monkeypatch.undo()
    assert (run / "checkpoint.pt").read_bytes() == before
    assert not list(run.glob(".*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    load_checkpoint(run / "checkpoint.pt")


def test_every_per_epoch_log_is_trimmed_to_the_checkpoint_on_resume(tmp_path):
    run = RunDirectory(tmp_path)
    fit(CountingJob(steps=2), run, epochs=1, progress=False)
    with open(run.path / "alphas.jsonl", "a") as handle:  # epoch 1's line, then a line of an epoch the checkpoint never saw
        handle.write(json.dumps({"epoch": 1, "normal": []}) + "\n" + json.dumps({"epoch": 2, "normal": []}) + "\n")
    with open(run.metrics_path, "a") as handle:
        handle.write(json.dumps({"epoch": 2}) + "\n")
    fit(CountingJob(steps=2), run, epochs=1, resume=True, progress=False)  # finished at its checkpoint: trims only
    assert [json.loads(line)["epoch"] for line in (run.path / "alphas.jsonl").read_text().splitlines()] == [1]
    assert [r["epoch"] for r in run.read_metrics()] == [1]
