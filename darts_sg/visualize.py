"""Pictures of a search: cell diagrams (graphviz), alpha heatmaps, and TensorBoard logging.

Drawing never stops a run: without the Graphviz ``dot`` binary the ``.gv`` source is written
and one line says how to install Graphviz.
"""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .errors import UserError
from .genotype import Genotype

__all__ = ["cell_graph", "plot_genotype", "alpha_heatmap", "log_search_epoch", "dot_available", "op_shares", "alpha_entropy"]

BLOCK_OPS = {"sg_block": "#f4a259", "inv_res": "#8cb369"}
INSTALL_HINT = "Graphviz 'dot' not found: wrote the .gv source only; install Graphviz (e.g. apt-get install graphviz) to get images"
_hint_shown = False


def dot_available() -> bool:
    return shutil.which("dot") is not None


def cell_graph(genotype: Genotype, cell: str = "normal"):
    """A graphviz Digraph of one cell: inputs c_{k-2}, c_{k-1}, nodes, output c_{k}; edges labelled by op.

    Sandglass and inverted-residual edges are drawn bold and coloured.
    """
    import graphviz

    if cell not in ("normal", "reduce"):
        raise UserError(f"cell must be 'normal' or 'reduce', got {cell!r}")
    edges = genotype.normal if cell == "normal" else genotype.reduce
    concat = genotype.normal_concat if cell == "normal" else genotype.reduce_concat
    g = graphviz.Digraph(
        name=f"{cell}_cell",
        format="png",
        edge_attr={"fontsize": "18", "fontname": "helvetica"},
        node_attr={"style": "filled", "shape": "rect", "align": "center", "fontsize": "18", "height": "0.5",
                   "width": "0.5", "penwidth": "2", "fontname": "helvetica"},
        engine="dot",
    )  # fmt: skip
    g.attr(rankdir="LR", label=f"{cell} cell", labelloc="t", fontsize="20")
    g.node("c_{k-2}", fillcolor="darkseagreen2")
    g.node("c_{k-1}", fillcolor="darkseagreen2")
    steps = len(edges) // 2
    for node in range(steps):
        g.node(str(node), fillcolor="lightblue")
    for k, (op, src) in enumerate(edges):
        source = "c_{k-2}" if src == 0 else "c_{k-1}" if src == 1 else str(src - 2)
        attrs = {"label": op}
        if op in BLOCK_OPS:
            attrs.update(color=BLOCK_OPS[op], fontcolor=BLOCK_OPS[op], penwidth="3", style="bold")
        else:
            attrs.update(fillcolor="gray")
        g.edge(source, str(k // 2), **attrs)
    g.node("c_{k}", fillcolor="palegoldenrod")
    for idx in concat:
        g.edge(str(idx - 2), "c_{k}", fillcolor="gray")
    return g


def plot_genotype(genotype: Genotype, prefix: str | Path, fmt: str = "png", quiet: bool = False) -> list[Path]:
    """Draw both cells to `{prefix}_normal.{fmt}` and `{prefix}_reduce.{fmt}`.

    Without `dot`, writes `{prefix}_{cell}.gv` instead and prints one line on how to get images.
    Returns the files written.
    """
    global _hint_shown
    if fmt not in ("png", "svg", "pdf"):
        raise UserError(f"unknown format {fmt!r}; use png, svg or pdf")
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for cell in ("normal", "reduce"):
        graph = cell_graph(genotype, cell)
        stem = prefix.parent / f"{prefix.name}_{cell}"
        source = stem.with_suffix(".gv")
        source.write_text(graph.source)
        if not dot_available():
            written.append(source)
            continue
        import graphviz

        try:
            out = graph.render(outfile=str(stem.with_suffix(f".{fmt}")), format=fmt, cleanup=False, quiet=True)
            written.append(Path(out))
        except (graphviz.backend.ExecutableNotFound, graphviz.backend.CalledProcessError, OSError):
            written.append(source)
    if not dot_available() and not (_hint_shown or quiet):
        print(INSTALL_HINT, file=sys.stderr)
        _hint_shown = True
    return written


# ----------------------------------------------------------------------------------------- alpha statistics


def alpha_entropy(weights: torch.Tensor) -> float:
    """Mean entropy (nats) of the per-edge op distributions."""
    w = weights.clamp_min(1e-12)
    return float(-(w * w.log()).sum(dim=-1).mean())


def op_shares(weights: torch.Tensor, primitives: Sequence[str]) -> dict[str, float]:
    """Share of the total alpha weight held by each op, averaged over edges."""
    w = weights / weights.sum(dim=-1, keepdim=True)
    mean = w.mean(dim=0)
    return {name: float(mean[k]) for k, name in enumerate(primitives)}


def _edge_labels(steps: int) -> list[str]:
    labels = []
    for node in range(steps):
        for src in range(node + 2):
            name = "k-2" if src == 0 else "k-1" if src == 1 else str(src - 2)
            labels.append(f"{name}->{node}")
    return labels


def alpha_heatmap(weights: torch.Tensor, primitives: Sequence[str], title: str = "", cell: int = 22) -> np.ndarray:
    """An RGB heatmap (H, W, 3 uint8) of edge x op weights, with op and edge labels (Pillow).

    Colours span this matrix's own min..max (printed beside it): early in a search all weights
    are near 1/num_ops and a fixed 0..1 scale would show nothing.
    """
    from PIL import Image, ImageDraw

    w = weights.detach().float().cpu().numpy()
    n_edges, n_ops = w.shape
    steps = 0
    while steps * (steps + 3) // 2 < n_edges:  # a cell with s nodes has s(s+3)/2 edges
        steps += 1
    labels = _edge_labels(steps) if steps * (steps + 3) // 2 == n_edges else [str(i) for i in range(n_edges)]
    left, top = 70, 110
    width, height = left + n_ops * cell + 70, top + n_edges * cell + 10
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 4), title, fill="black")
    lo, hi = float(w.min()), float(w.max())
    span = max(hi - lo, 1e-12)  # colour by the range of this matrix, so small differences show
    for e in range(n_edges):
        draw.text((4, top + e * cell + 5), labels[e], fill="black")
        for o in range(n_ops):
            v = (w[e, o] - lo) / span
            colour = (int(255 * (1 - v * 0.85)), int(255 * (1 - v * 0.55)), 255)
            x0, y0 = left + o * cell, top + e * cell
            draw.rectangle([x0, y0, x0 + cell - 2, y0 + cell - 2], fill=colour)
    for o, name in enumerate(primitives):
        label = Image.new("RGB", (top - 14, cell), "white")
        ImageDraw.Draw(label).text((2, 5), name, fill="black")
        label = label.rotate(90, expand=True)
        image.paste(label, (left + o * cell, 14))
    draw.text((left + n_ops * cell + 6, top), f"max\n{hi:.4f}", fill="black")
    draw.text((left + n_ops * cell + 6, top + n_edges * cell - 24), f"min\n{lo:.4f}", fill="black")
    return np.asarray(image)


# ----------------------------------------------------------------------------------------- TensorBoard


def _image_array(path: Path) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except OSError:
        return None


def log_search_epoch(writer, epoch: int, metrics: dict[str, Any], model, run) -> None:
    """Scalars, alpha heatmaps, op shares, entropy and cell diagrams of one search epoch."""
    for key in ("train_loss", "train_acc", "train_alpha_loss", "val_loss", "val_acc", "lr", "alpha_lr", "images_per_s"):
        if key in metrics:
            writer.add_scalar(f"search/{key}", metrics[key], epoch)
    normal, reduce = model.op_weights()
    for cell, weights in (("normal", normal), ("reduce", reduce)):
        writer.add_scalar(f"alpha_entropy/{cell}", alpha_entropy(weights), epoch)
        for op, share in op_shares(weights, model.primitives).items():
            writer.add_scalar(f"op_share_{cell}/{op}", share, epoch)
        heat = alpha_heatmap(weights, model.primitives, title=f"softmax(alpha) {cell}, epoch {epoch}")
        writer.add_image(f"alphas/{cell}", heat, epoch, dataformats="HWC")
    genotype = Genotype.from_dict(metrics["genotype"]) if "genotype" in metrics else model.genotype()
    for path in plot_genotype(genotype, run.file("cells", f"epoch_{epoch:03d}"), "png"):
        if path.suffix == ".png":
            image = _image_array(path)
            if image is not None:
                writer.add_image(f"cells/{path.stem.rsplit('_', 1)[-1]}", image, epoch, dataformats="HWC")


# ----------------------------------------------------------------------------------------- scatter plot

SERIES_COLOURS = ["#1f77b4", "#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    step = (hi - lo) / (n - 1)
    return [lo + i * step for i in range(n)]


def scatter_plot(
    series: dict[str, list[tuple[float, float]]], x_label: str, y_label: str, title: str, size=(720, 480)
) -> bytes:
    """A PNG scatter plot (one colour per series, with a legend), drawn with Pillow."""
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 70, 150, 40, 50
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    points = [p for values in series.values() for p in values]
    xs, ys = [p[0] for p in points] or [0.0, 1.0], [p[1] for p in points] or [0.0, 1.0]
    pad_x, pad_y = (max(xs) - min(xs)) * 0.1 or 0.5, (max(ys) - min(ys)) * 0.1 or 0.5
    x0, x1, y0, y1 = min(xs) - pad_x, max(xs) + pad_x, min(ys) - pad_y, max(ys) + pad_y

    def to_px(x: float, y: float) -> tuple[float, float]:
        px = left + (x - x0) / (x1 - x0) * (width - left - right)
        py = height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)
        return px, py

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for x in _ticks(x0, x1):
        px, _ = to_px(x, y0)
        draw.line([px, height - bottom, px, height - bottom + 5], fill="black")
        draw.text((px - 12, height - bottom + 8), f"{x:.3g}", fill="black")
    for y in _ticks(y0, y1):
        _, py = to_px(x0, y)
        draw.line([left - 5, py, left, py], fill="black")
        draw.text((8, py - 6), f"{y:.4g}", fill="black")
    draw.text((left + (width - left - right) // 2 - 30, height - 20), x_label, fill="black")
    draw.text((8, 12), y_label, fill="black")
    draw.text((left + 120, 12), title, fill="black")
    for k, (name, values) in enumerate(series.items()):
        colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
        for x, y in values:
            px, py = to_px(x, y)
            draw.ellipse([px - 5, py - 5, px + 5, py + 5], fill=colour, outline="black")
        ly = top + 10 + 20 * k
        draw.ellipse([width - right + 15, ly, width - right + 25, ly + 10], fill=colour, outline="black")
        draw.text((width - right + 32, ly - 1), f"{name} ({len(values)})", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
