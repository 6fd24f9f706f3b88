import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from darts_sg.plots.figures import (
    alpha_heatmap_figure,
    alpha_trajectories_figure,
    edge_labels,
    nodes_for_edges,
    save_figure,
)

ROOT = Path(__file__).resolve().parents[1]
PRIMITIVES = ["none", "skip_connect", "sep_conv_3x3"]


def _records(n_edges: int, epochs: int = 3) -> list[dict]:
    """alphas.jsonl lines whose weights encode (epoch, edge, op), so every plotted value can be traced back."""
    records = []
    for epoch in range(1, epochs + 1):
        weights = [[(epoch * 100 + edge * 3 + op) / 10_000 for op in range(3)] for edge in range(n_edges)]
        records.append({"epoch": epoch, "primitives": PRIMITIVES, "normal": weights, "reduce": [[1 / 3] * 3] * n_edges})
    return records


def test_edge_labels_follow_the_genotype_numbering():
    assert nodes_for_edges(14) == 4 and nodes_for_edges(5) == 2 and nodes_for_edges(6) is None
    labels = edge_labels(14)
    assert labels[:3] == ["node 2 <- input 0", "node 2 <- input 1", "node 3 <- input 0"]
    assert labels[-1] == "node 5 <- node 4" and len(set(labels)) == 14
    assert edge_labels(6) == [f"edge {i}" for i in range(6)]


@pytest.mark.parametrize("n_edges", [14, 5])
def test_trajectories_draw_one_panel_per_edge_with_each_ops_weight_against_epoch(n_edges):
    records = _records(n_edges)
    fig = alpha_trajectories_figure(records, "normal")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == edge_labels(n_edges)
    for edge, ax in enumerate(panels):
        lines = [line for line in ax.get_lines() if line.get_label() in PRIMITIVES]
        assert [line.get_label() for line in lines] == PRIMITIVES
        for op, line in enumerate(lines):
            assert list(line.get_xdata()) == [1, 2, 3]
            assert np.allclose(line.get_ydata(), [records[e]["normal"][edge][op] for e in range(3)])
    legend_texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert legend_texts == PRIMITIVES  # one shared legend
    assert "normal" in fig._suptitle.get_text()
    reduce = alpha_trajectories_figure(records, "reduce")
    first = [ax for ax in reduce.axes if ax.get_title()][0]
    assert np.allclose(first.get_lines()[0].get_ydata(), 1 / 3)


def test_trajectories_refuse_bad_input():
    with pytest.raises(ValueError, match="no alpha records"):
        alpha_trajectories_figure([])
    with pytest.raises(ValueError, match="cell must be"):
        alpha_trajectories_figure(_records(5), "other")
    mixed = _records(5)
    mixed[1] = {**mixed[1], "primitives": ["none", "skip_connect", "max_pool_3x3"]}
    with pytest.raises(ValueError, match="same primitives"):
        alpha_trajectories_figure(mixed)


def test_heatmap_shows_the_matrix_annotated_with_a_colour_bar():
    weights = torch.softmax(torch.randn(14, 3, generator=torch.Generator().manual_seed(0)), -1)
    fig = alpha_heatmap_figure(weights, PRIMITIVES, "softmax(alpha) normal")
    heat, colourbar = fig.axes
    assert np.allclose(heat.get_images()[0].get_array(), weights.numpy())
    assert [t.get_text() for t in heat.get_xticklabels()] == PRIMITIVES
    assert [t.get_text() for t in heat.get_yticklabels()] == edge_labels(14)
    annotations = [t.get_text() for t in heat.texts]
    assert annotations == [f"{v:.3f}" for v in weights.flatten().tolist()]
    assert colourbar.get_ylabel() == "softmax(alpha)" and heat.get_title() == "softmax(alpha) normal"
    with pytest.raises(ValueError, match="primitive names"):
        alpha_heatmap_figure(weights, PRIMITIVES[:2])


def test_save_figure_writes_a_png_atomically_and_closes_the_figure(tmp_path):
    fig = alpha_heatmap_figure(np.full((5, 3), 1 / 3), PRIMITIVES)
    path = save_figure(fig, tmp_path / "sub" / "heat.png")
    assert path == tmp_path / "sub" / "heat.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(path.parent) == ["heat.png"]  # no temporary file left behind
    assert fig.axes == []


def test_the_command_line_loads_no_torchvision_until_a_path_is_dropped():
    """`--help` and argument errors answer without torchvision's ~2 s import (and the torch._dynamo it pulls in)."""
    code = ("import sys, darts_sg.cli, darts_sg.jobs.search; "
            "assert not {'torchvision', 'torch._dynamo'} & set(sys.modules), 'torchvision imported'")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_importing_the_figure_modules_loads_no_matplotlib():
    code = "import sys, darts_sg.plots.figures, darts_sg.plots.visualize; assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
