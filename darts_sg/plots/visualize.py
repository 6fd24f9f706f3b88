"""Pictures of a search: cell diagrams (graphviz), alpha statistics, and TensorBoard logging
(the matplotlib figures themselves are drawn in figures.py).

Drawing never stops a run: without the Graphviz ``dot`` binary the ``.gv`` source is written
and one line says how to install Graphviz.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..model.genotype import Genotype
from ..utils.errors import UserError
from ..utils.io import atomic_write_bytes, atomic_write_text, make_parent, up_to_date
from .figures import alpha_heatmap_figure, alpha_trajectories_figure, save_figure

__all__ = ["cell_graph", "plot_genotype", "plot_search_run", "alpha_figures", "log_search_epoch", "read_alpha_records", "dot_available", "op_shares", "alpha_entropy"]

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
    """Draw both cells to `{prefix}_normal.{fmt}` and `{prefix}_reduce.{fmt}`, next to their graphviz
    source `{prefix}_{cell}.gv`. A cell whose source and image are already there unchanged is not drawn again.

    Without `dot`, writes the `.gv` source only and prints one line on how to get images.
    Returns the files written (or kept).
    """
    global _hint_shown
    if fmt not in ("png", "svg", "pdf"):
        raise UserError(f"unknown format {fmt!r}; use png, svg or pdf")
    prefix = make_parent(prefix)
    written = []
    for cell in ("normal", "reduce"):
        graph = cell_graph(genotype, cell)
        stem = prefix.parent / f"{prefix.name}_{cell}"
        source, image = stem.with_suffix(".gv"), stem.with_suffix(f".{fmt}")
        if _drawn_before(source, image, graph.source):
            written.append(image)
            continue
        atomic_write_text(source, graph.source)  # first: an image older than its source is drawn again
        if not dot_available():
            written.append(source)
            continue
        import graphviz

        try:
            atomic_write_bytes(image, graph.pipe(format=fmt, quiet=True))
            written.append(image)
        except (graphviz.backend.ExecutableNotFound, graphviz.backend.CalledProcessError, OSError):
            written.append(source)
    if not dot_available() and not (_hint_shown or quiet):
        print(INSTALL_HINT, file=sys.stderr)
        _hint_shown = True
    return written


def _drawn_before(source: Path, image: Path, text: str) -> bool:
    """Whether `image` was drawn from a graphviz `source` that holds `text` (both written atomically)."""
    return up_to_date(image, source) and source.read_text() == text


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


# ----------------------------------------------------------------------------------------- TensorBoard


def _image_array(path: Path) -> np.ndarray | None:
    """A PNG as an (H, W, 3) uint8 array, or None when it cannot be read."""
    from matplotlib.image import imread

    try:
        image = imread(path)
    except (OSError, ValueError, SyntaxError):
        return None
    if image.dtype != np.uint8:
        image = (image * 255).round().astype(np.uint8)
    return image[..., :3] if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)


def read_alpha_records(path: str | Path, last_epoch: int | None = None) -> list[dict[str, Any]]:
    """The records of a search run's alphas.jsonl, one per epoch in order, up to `last_epoch`.

    A torn last line (a kill mid-write) is ignored; an epoch written twice (a run resumed from
    a checkpoint older than its last line) keeps its latest record.
    """
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if last_epoch is None or record["epoch"] <= last_epoch:
            by_epoch[int(record["epoch"])] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def alpha_figures(records: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    """(TensorBoard tag, PNG name, figure) of a search's alpha figures: per cell, the heatmap of
    the last record and the trajectories over all of them (records: lines of alphas.jsonl)."""
    last = records[-1]
    figures = []
    for cell in ("normal", "reduce"):
        title = f"softmax(alpha) {cell} cell, epoch {last['epoch']}"
        figures.append((f"alphas/{cell}", f"alpha_heatmap_{cell}.png", alpha_heatmap_figure(last[cell], last["primitives"], title)))
        figures.append((f"alpha_trajectories/{cell}", f"alpha_trajectories_{cell}.png", alpha_trajectories_figure(records, cell)))
    return figures


def plot_search_run(run_path: str | Path) -> list[Path]:
    """Draw the alpha figures of a search run from its alphas.jsonl into RUN/figures/ (PNG)."""
    from ..utils.errors import UserError

    alphas = Path(run_path) / "alphas.jsonl"
    records = read_alpha_records(alphas) if alphas.is_file() else []
    if not records:
        raise UserError(f"{run_path} holds no alphas.jsonl with a finished epoch; give a search run directory")
    return [save_figure(fig, Path(run_path) / "figures" / name) for _, name, fig in alpha_figures(records)]


def log_search_epoch(writer, epoch: int, metrics: dict[str, Any], model, run, figures: bool = True) -> None:
    """Scalars, op shares and entropy of one search epoch; alpha heatmaps and alpha trajectories
    as TensorBoard figures and as PNGs in ``figures/`` (unless `figures` is False); cell diagrams."""
    for key in ("train_loss", "train_acc", "train_alpha_loss", "val_loss", "val_acc", "lr", "alpha_lr", "images_per_s",
                "skipped_weight_steps", "skipped_alpha_steps"):  # fmt: skip
        if key in metrics:
            writer.add_scalar(f"search/{key}", metrics[key], epoch)
    normal, reduce = model.op_weights()
    for cell, weights in (("normal", normal), ("reduce", reduce)):
        writer.add_scalar(f"alpha_entropy/{cell}", alpha_entropy(weights), epoch)
        for op, share in op_shares(weights, model.primitives).items():
            writer.add_scalar(f"op_share_{cell}/{op}", share, epoch)
    alphas = run.path / "alphas.jsonl"
    records = read_alpha_records(alphas, epoch) if figures and alphas.exists() else []
    for tag, name, figure in alpha_figures(records) if records else []:
        # rendered once: the PNG is also TensorBoard's image (a second rendering by add_figure took as long again)
        _add_png(writer, tag, save_figure(figure, run.file("figures", name)), epoch)
    genotype = Genotype.from_dict(metrics["genotype"]) if "genotype" in metrics else model.genotype()
    for path in plot_genotype(genotype, run.file("cells", f"epoch_{epoch:03d}"), "png"):
        if path.suffix == ".png":
            _add_png(writer, f"cells/{path.stem.rsplit('_', 1)[-1]}", path, epoch)


def _add_png(writer, tag: str, path: Path, epoch: int) -> None:
    """Log the PNG at `path` as a TensorBoard image (skipped when it cannot be read)."""
    image = _image_array(path)
    if image is not None:
        writer.add_image(tag, image, epoch, dataformats="HWC")
