import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import darts_sg
from darts_sg.model.genotype import load_genotype
from darts_sg.plots.visualize import alpha_entropy, cell_graph, op_shares, plot_genotype, read_alpha_records

ROOT = Path(__file__).resolve().parents[1]
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz dot not installed (scripts/setup.sh installs it)")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def _graph_structure(source: str) -> tuple[set[str], list[tuple[str, str, str]]]:
    """The node names and the (source, target, label) edges of a DOT source written by cell_graph."""
    nodes, edges = set(), []
    for line in source.splitlines():
        line = line.strip()
        edge = re.fullmatch(r'("[^"]+"|\w+) -> ("[^"]+"|\w+) \[(.*)\]', line)
        if edge:
            label = re.search(r"label=(\w+)", edge.group(3))
            edges.append((edge.group(1).strip('"'), edge.group(2).strip('"'), label.group(1) if label else ""))
            continue
        node = re.fullmatch(r'("[^"]+"|\w+) \[fillcolor=\w+\]', line)
        if node:
            nodes.add(node.group(1).strip('"'))
    return nodes, edges


def test_cell_graph_has_inputs_nodes_output_and_labelled_edges():
    genotype = load_genotype("darts_v2")
    nodes, edges = _graph_structure(cell_graph(genotype, "normal").source)
    assert nodes == {"c_{k-2}", "c_{k-1}", "0", "1", "2", "3", "c_{k}"}
    # DARTS_V2 normal cell, node by node (inputs 0, 1 are c_{k-2}, c_{k-1}; node 2 is drawn as "0").
    assert sorted(e for e in edges if e[1] != "c_{k}") == sorted([
        ("c_{k-2}", "0", "sep_conv_3x3"), ("c_{k-1}", "0", "sep_conv_3x3"),
        ("c_{k-2}", "1", "sep_conv_3x3"), ("c_{k-1}", "1", "sep_conv_3x3"),
        ("c_{k-1}", "2", "sep_conv_3x3"), ("c_{k-2}", "2", "skip_connect"),
        ("c_{k-2}", "3", "skip_connect"), ("0", "3", "dil_conv_3x3"),
    ])  # fmt: skip
    assert sorted(e[0] for e in edges if e[1] == "c_{k}") == ["0", "1", "2", "3"]


def test_block_ops_are_drawn_distinctly():
    genotype = darts_sg.Genotype.from_dict(
        {"normal": [["sg_block", 0], ["inv_res", 1], ["skip_connect", 0], ["sg_block", 2]], "normal_concat": [2, 3],
         "reduce": [["max_pool_3x3", 0], ["sg_block", 1], ["skip_connect", 2], ["max_pool_3x3", 1]], "reduce_concat": [2, 3]}
    )  # fmt: skip
    lines = cell_graph(genotype, "normal").source.splitlines()
    sg = [line for line in lines if "label=sg_block" in line]
    classic = [line for line in lines if "label=skip_connect" in line]
    assert sg and all("bold" in line and "color=" in line for line in sg)
    assert classic and not any("bold" in line for line in classic)


@needs_dot
def test_plot_renders_real_png_files(tmp_path):
    files = plot_genotype(load_genotype("darts_v2"), tmp_path / "v2")
    pngs = [f for f in files if f.suffix == ".png"]
    assert [f.name for f in pngs] == ["v2_normal.png", "v2_reduce.png"]
    for f in pngs:
        width, height = png_size(f)
        assert 200 < width < 5000 and 100 < height < 5000


@needs_dot
def test_plot_keeps_an_unchanged_cell_and_redraws_a_changed_or_stale_one(tmp_path):
    normal, reduce = plot_genotype(load_genotype("darts_v2"), tmp_path / "c")
    drawn = {p: p.stat().st_mtime_ns for p in (normal, reduce)}
    assert plot_genotype(load_genotype("darts_v2"), tmp_path / "c") == [normal, reduce]
    assert {p: p.stat().st_mtime_ns for p in drawn} == drawn  # the same cells: nothing drawn again
    other = load_genotype("darts_v1")
    assert other.normal != load_genotype("darts_v2").normal
    plot_genotype(other, tmp_path / "c")
    assert all(p.stat().st_mtime_ns != drawn[p] for p in drawn)
    assert (tmp_path / "c_normal.gv").read_text() == cell_graph(other, "normal").source
    # an image older than its source (a run killed between writing the two) is drawn again
    os.utime(normal, ns=(1, 1))
    plot_genotype(other, tmp_path / "c")
    assert normal.stat().st_mtime_ns > 1 and png_size(normal)[0] > 200


@needs_dot
def test_plot_command_draws_darts_v2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "darts_sg", "plot", "darts_v2", "-o", str(tmp_path / "c"), "--format", "svg"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "c_normal.svg").read_text().lstrip().startswith(("<?xml", "<svg"))


def test_plot_without_dot_writes_source_and_says_how_to_install(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path / "empty-bin")}
    result = subprocess.run([sys.executable, "-m", "darts_sg", "plot", "darts_v1", "-o", str(tmp_path / "c")],
                            capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "c_normal.gv").read_text().startswith("digraph")
    assert not (tmp_path / "c_normal.png").exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "install Graphviz" in lines[0]


def test_alpha_statistics():
    uniform = torch.full((14, 8), 1 / 8)
    assert abs(alpha_entropy(uniform) - torch.log(torch.tensor(8.0)).item()) < 1e-6
    peaked = torch.zeros(14, 8)
    peaked[:, 3] = 1
    assert alpha_entropy(peaked) < 1e-6
    shares = op_shares(peaked, [f"op{i}" for i in range(8)])
    assert shares["op3"] == 1.0 and sum(shares.values()) == pytest.approx(1.0)


def test_read_alpha_records_keeps_the_latest_line_per_epoch_and_ignores_a_torn_one(tmp_path):
    path = tmp_path / "alphas.jsonl"
    lines = [{"epoch": 1, "v": "a"}, {"epoch": 2, "v": "old"}, {"epoch": 2, "v": "new"}, {"epoch": 3, "v": "c"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"epoch": 4, "v"')
    assert [r["v"] for r in read_alpha_records(path)] == ["a", "new", "c"]
    assert [r["v"] for r in read_alpha_records(path, last_epoch=2)] == ["a", "new"]


def test_search_logs_pictures_to_tensorboard(tmp_path, data_root, read_hparams):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from darts_sg.jobs.search import run_search

    from test_search_cli import smoke_config

    out = tmp_path / "run"
    run_search(smoke_config(data_root, figures=True), out, progress=False)
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    figures = {"alphas/normal": "alpha_heatmap_normal", "alphas/reduce": "alpha_heatmap_reduce",
               "alpha_trajectories/normal": "alpha_trajectories_normal", "alpha_trajectories/reduce": "alpha_trajectories_reduce"}  # fmt: skip
    assert set(figures) <= set(tags["images"])
    for tag, name in figures.items():  # TensorBoard shows the PNGs written to figures/
        image = events.Images(tag)[0]
        assert image.step == 1 and image.width > 300 and image.height > 200
        assert (image.width, image.height) == png_size(out / "figures" / f"{name}.png")
    scalars = set(tags["scalars"])
    assert {"search/train_loss", "search/val_acc", "search/lr", "alpha_entropy/normal", "op_share_normal/sg_block"} <= scalars
    settings, metric_tags, events = read_hparams(out / "tensorboard" / "hparams")
    assert settings["ops"] == "sgblock" and settings["nodes"] == 2 and settings["order"] == 1
    assert {"hparams/val_acc", "hparams/val_loss"} <= metric_tags
    final = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert events.Scalars("hparams/val_acc")[0].value == pytest.approx(final["val_acc"])
    if shutil.which("dot"):
        assert {"cells/normal", "cells/reduce"} <= set(tags["images"])
        assert (out / "cells" / "epoch_001_normal.png").exists()


def test_plot_command_draws_the_alpha_figures_of_a_search_run(tmp_path):
    run = tmp_path / "search"
    shutil.copytree(ROOT / "results" / "quick-sgblock-s0" / "search", run, ignore=shutil.ignore_patterns("figures"))
    result = subprocess.run([sys.executable, "-m", "darts_sg", "plot", str(run)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    names = {Path(line).name for line in result.stdout.split()}
    expected = {f"alpha_{kind}_{cell}.png" for kind in ("heatmap", "trajectories") for cell in ("normal", "reduce")}
    assert expected <= names
    assert all(png_size(run / "figures" / name)[0] > 500 for name in expected)
    empty = subprocess.run([sys.executable, "-m", "darts_sg", "plot", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert empty.returncode == 2 and "holds no alphas.jsonl" in empty.stderr
