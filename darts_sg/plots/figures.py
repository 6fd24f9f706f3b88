"""Figures of a search and of an experiment, drawn with matplotlib.

Every function returns a ``matplotlib.figure.Figure`` built without pyplot (so nothing here
selects a backend or touches matplotlib's global state); ``save_figure`` renders it to PNG
with the Agg canvas and writes the file atomically. TensorBoard logs the same PNGs as images
(``visualize.log_search_epoch``).
"""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..utils.io import atomic_write_bytes

__all__ = [
    "alpha_heatmap_figure",
    "alpha_trajectories_figure",
    "edge_labels",
    "figure_png",
    "nodes_for_edges",
    "save_figure",
]

DPI = 100


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def nodes_for_edges(n_edges: int) -> int | None:
    """The number of intermediate nodes of a DARTS cell with `n_edges` edges (s nodes: s(s+3)/2), or None."""
    steps = 0
    while steps * (steps + 3) // 2 < n_edges:
        steps += 1
    return steps if steps * (steps + 3) // 2 == n_edges else None


def _source_name(src: int) -> str:
    return f"input {src}" if src < 2 else f"node {src}"


def edge_labels(n_edges: int) -> list[str]:
    """Labels of a cell's edges in their order: "node 2 <- input 0", ..., "node 5 <- node 4".

    Nodes are numbered as in a genotype: 0 and 1 are the cell's inputs (c_{k-2}, c_{k-1}),
    2, 3, ... the intermediate nodes. Edge counts that are not a DARTS cell's give "edge i".
    """
    steps = nodes_for_edges(n_edges)
    if steps is None:
        return [f"edge {i}" for i in range(n_edges)]
    return [f"node {node + 2} <- {_source_name(src)}" for node in range(steps) for src in range(node + 2)]


def _as_matrix(weights: Any) -> np.ndarray:
    if hasattr(weights, "detach"):
        weights = weights.detach().float().cpu().numpy()
    matrix = np.asarray(weights, dtype=float)
    if matrix.ndim != 2:
        raise ValueError(f"expected an edge x op matrix, got shape {matrix.shape}")
    return matrix


def alpha_heatmap_figure(weights: Any, primitives: Sequence[str], title: str = ""):
    """Heatmap of softmax(alpha), edges x ops, each cell annotated with its weight, with a colour bar.

    Colours span this matrix's own range (the colour bar says which): early in a search every
    weight is near 1/num_ops and a fixed 0..1 scale would show nothing.
    """
    matrix = _as_matrix(weights)
    n_edges, n_ops = matrix.shape
    if len(primitives) != n_ops:
        raise ValueError(f"{n_ops} op columns but {len(primitives)} primitive names")
    fig = _new_figure(1.0 + 0.75 * n_ops, 1.6 + 0.34 * n_edges)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="viridis", aspect="auto")
    ax.set_xticks(range(n_ops), labels=list(primitives), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n_edges), labels=edge_labels(n_edges))
    ax.set_xlabel("operation")
    threshold = matrix.min() + 0.6 * (matrix.max() - matrix.min())
    for e in range(n_edges):
        for o in range(n_ops):
            value = matrix[e, o]
            ax.text(o, e, f"{value:.3f}", ha="center", va="center", fontsize=7,
                    color="black" if value > threshold else "white")  # fmt: skip
    fig.colorbar(image, ax=ax, label="softmax(alpha)")
    if title:
        ax.set_title(title)
    return fig


def alpha_trajectories_figure(records: Sequence[Mapping[str, Any]], cell: str = "normal"):
    """Each edge's op weights against the search epoch: one panel per edge, one colour per op.

    `records` are the lines of a search run's ``alphas.jsonl`` (``epoch``, ``primitives`` and
    the softmax weights of the ``normal`` and ``reduce`` cells, edge x op). Panels sit one row
    per intermediate node, one column per input of that node, all on one y scale fitted to the
    weights; a dashed line marks the uniform weight 1/num_ops where every edge starts.
    """
    if cell not in ("normal", "reduce"):
        raise ValueError(f"cell must be 'normal' or 'reduce', got {cell!r}")
    if not records:
        raise ValueError("no alpha records to draw")
    primitives = list(records[0]["primitives"])
    if any(list(r["primitives"]) != primitives for r in records):
        raise ValueError("the alpha records do not all have the same primitives")
    epochs = [int(r["epoch"]) for r in records]
    series = np.stack([_as_matrix(r[cell]) for r in records])  # epoch x edge x op
    _, n_edges, n_ops = series.shape
    steps = nodes_for_edges(n_edges)
    if steps is not None:
        rows, cols = steps, steps + 1
        slots = [(node, src) for node in range(steps) for src in range(node + 2)]
    else:
        cols = math.ceil(math.sqrt(n_edges))
        rows = math.ceil(n_edges / cols)
        slots = [divmod(i, cols) for i in range(n_edges)]
    fig = _new_figure(2.4 * cols + 1.8, 1.8 * rows + 0.6)
    grid = fig.add_gridspec(rows, cols)
    colours = _colours(n_ops)
    low, high = min(float(series.min()), 1.0 / n_ops), max(float(series.max()), 1.0 / n_ops)
    margin = 0.08 * (high - low) or 0.01
    limits = (max(low - margin, 0.0), min(high + margin, 1.0))  # zoomed: early in a search the weights move little
    axes = []
    for edge, (row, col) in enumerate(slots):
        ax = fig.add_subplot(grid[row, col], sharey=axes[0] if axes else None)
        for o in range(n_ops):
            ax.plot(epochs, series[:, edge, o], color=colours[o], marker="o" if len(epochs) < 12 else None, markersize=3,
                    linewidth=1.4, label=primitives[o])  # fmt: skip
        ax.axhline(1.0 / n_ops, color="0.6", linestyle="--", linewidth=0.8)
        ax.set_title(edge_labels(n_edges)[edge], fontsize=9)
        ax.set_ylim(*limits)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if row == rows - 1 or steps is None:
            ax.set_xlabel("epoch", fontsize=8)
        axes.append(ax)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", title="operation", fontsize=8)
    fig.suptitle(f"softmax(alpha) of the {cell} cell's edges over the search")
    return fig


def pareto_figure(groups: Mapping[str, Sequence[tuple[float, float]]], front: Sequence[tuple[float, float, str]],
                  x_label: str, y_label: str, title: str):  # fmt: skip
    """Accuracy against cost: the points of each group, and the Pareto front (cheapest first) as a step line
    through its points, each named."""
    fig = _new_figure(7.2, 4.8)
    ax = fig.add_subplot()
    colours = _colours(len(groups))
    for k, (name, points) in enumerate(groups.items()):
        xy = np.asarray(points, dtype=float).reshape(-1, 2)
        ax.scatter(xy[:, 0], xy[:, 1], color=colours[k], alpha=0.6, edgecolors="black", linewidths=0.5, label=f"{name} ({len(xy)})")
    if front:
        xs, ys, names = zip(*front)
        ax.step(xs, ys, where="post", color="black", lw=1.2, ls="--", label=f"Pareto front ({len(front)})")
        ax.scatter(xs, ys, s=140, facecolors="none", edgecolors="black", linewidths=1.5)
        for x, y, name in front:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, -10), fontsize=7)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(fontsize=8, loc="lower right")
    return fig


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def figure_png(fig, close: bool = True) -> bytes:
    """The figure rendered to PNG bytes (Agg canvas); the figure is closed unless `close` is False."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # attach an Agg canvas, whatever backend pyplot may use elsewhere
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    if close:
        _close(fig)
    return buffer.getvalue()


def save_figure(fig, path: str | Path) -> Path:
    """Write the figure as a PNG to `path` atomically (parent folders created) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, figure_png(fig))
    return path


def _close(fig) -> None:
    """Release the figure: unregister it from pyplot when pyplot manages it (never imports pyplot)."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
    fig.clear()
