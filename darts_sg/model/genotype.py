"""Genotypes: the discrete cell description, as plain data.

A genotype lists, for the normal and the reduction cell, two incoming edges per intermediate
node as ``(op, input)`` pairs, in node order, plus the nodes concatenated into the cell output.
Inputs 0 and 1 are the cell inputs c_{k-2} and c_{k-1}; node j (0-based) is state j + 2.

Genotypes are read from JSON, from a name in the top-level ``genotypes/`` folder (installed with
the package as ``darts_sg.zoo``), or from the ``Genotype(normal=[...], normal_concat=range(2, 6), ...)``
strings printed by the reference implementations, flat (quark0/darts) or nested one list per
node (pt.darts); they are parsed by walking the syntax tree, never evaluated.
"""

from __future__ import annotations

import ast
import importlib.resources
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from ..utils.errors import UserError
from .ops import OP_FACTORIES

__all__ = [
    "Genotype", "GenotypeError", "derive_genotype", "derive_cell", "cap_skips", "load_genotype", "parse_legacy", "genotype_dir",
    "random_genotype", "MAX_NODES",
]  # fmt: skip

EDGES_PER_NODE = 2
MAX_NODES = 16  # intermediate nodes per cell (DARTS uses 4): more would be a mistake, not an architecture


class GenotypeError(UserError):
    """A genotype that cannot be used; the message says what is wrong."""


Edge = tuple[str, int]


@dataclass(frozen=True)
class Genotype:
    """Discrete architecture: edges of the normal and reduction cells and their output nodes."""

    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]

    @property
    def steps(self) -> int:
        """Number of intermediate nodes per cell."""
        return len(self.normal) // EDGES_PER_NODE

    def ops(self) -> list[str]:
        """All ops of both cells, edge by edge."""
        return [op for op, _ in self.normal + self.reduce]

    def count_op(self, name: str) -> int:
        """How many edges of both cells use op `name`."""
        return sum(op == name for op in self.ops())

    def to_dict(self) -> dict:
        return {
            "normal": [[op, idx] for op, idx in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, idx] for op, idx in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        def cell(edges):
            return ", ".join(f"({op!r}, {idx})" for op, idx in edges)

        return (
            f"Genotype(normal=[{cell(self.normal)}], normal_concat={list(self.normal_concat)}, "
            f"reduce=[{cell(self.reduce)}], reduce_concat={list(self.reduce_concat)})"
        )

    def save(self, path: str | os.PathLike, summary: dict | None = None) -> None:
        """Write the genotype as JSON, atomically; a search's run `summary` (e.g. its cost) goes beside it."""
        from ..utils.io import atomic_write_text

        data = self.to_dict() if summary is None else {**self.to_dict(), "summary": summary}
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: object, allowed_ops: Iterable[str] | None = None) -> "Genotype":
        """Build and validate a genotype from its JSON form (a search's "summary" beside it is left aside)."""
        if not isinstance(data, dict):
            raise GenotypeError("a genotype must be a JSON object with keys normal, normal_concat, reduce, reduce_concat")
        missing = [k for k in ("normal", "normal_concat", "reduce", "reduce_concat") if k not in data]
        if missing:
            raise GenotypeError(f"genotype is missing the key(s) {', '.join(missing)}")
        extra = sorted(set(data) - {"normal", "normal_concat", "reduce", "reduce_concat", "summary"})
        if extra:
            raise GenotypeError(f"genotype has unexpected key(s) {', '.join(extra)}")
        genotype = cls(
            normal=_edges(data["normal"], "normal"),
            normal_concat=_concat(data["normal_concat"], "normal_concat"),
            reduce=_edges(data["reduce"], "reduce"),
            reduce_concat=_concat(data["reduce_concat"], "reduce_concat"),
        )
        genotype.validate(allowed_ops)
        return genotype

    def validate(self, allowed_ops: Iterable[str] | None = None) -> None:
        """Check edge counts, op names and node indices; raise GenotypeError naming the problem."""
        allowed = set(allowed_ops) if allowed_ops is not None else None
        for cell_name, edges, concat in (
            ("normal", self.normal, self.normal_concat),
            ("reduce", self.reduce, self.reduce_concat),
        ):
            if len(edges) == 0 or len(edges) % EDGES_PER_NODE:
                raise GenotypeError(
                    f"{cell_name} cell has {len(edges)} edges; it needs {EDGES_PER_NODE} per intermediate node"
                )
            steps = len(edges) // EDGES_PER_NODE
            if steps > MAX_NODES:
                raise GenotypeError(f"{cell_name} cell has {steps} nodes; at most {MAX_NODES} are supported")
            for k, (op, idx) in enumerate(edges):
                node = k // EDGES_PER_NODE
                if op not in OP_FACTORIES:
                    raise GenotypeError(f"{cell_name} edge {k}: unknown op {op!r}; valid ops: {', '.join(OP_FACTORIES)}")
                if allowed is not None and op not in allowed:
                    raise GenotypeError(
                        f"{cell_name} edge {k}: op {op!r} is not in the chosen space ({', '.join(sorted(allowed))})"
                    )
                if op == "none":
                    raise GenotypeError(f"{cell_name} edge {k}: 'none' cannot be an edge of a derived cell")
                if not 0 <= idx < node + 2:
                    raise GenotypeError(
                        f"{cell_name} edge {k}: input {idx} out of range for node {node} (valid: 0..{node + 1})"
                    )
            if not concat:
                raise GenotypeError(f"{cell_name}_concat is empty")
            for idx in concat:
                if not 2 <= idx < steps + 2:
                    raise GenotypeError(f"{cell_name}_concat: node {idx} out of range (valid: 2..{steps + 1})")
            if len(set(concat)) != len(concat):
                raise GenotypeError(f"{cell_name}_concat names a node twice")
        if len(self.normal) != len(self.reduce):
            raise GenotypeError("normal and reduce cells must have the same number of nodes")


def _edges(value: object, name: str) -> tuple[Edge, ...]:
    if not isinstance(value, (list, tuple)):
        raise GenotypeError(f"{name} must be a list of [op, input] pairs")
    edges = []
    for k, item in enumerate(value):
        if (
            not isinstance(item, (list, tuple))
            or len(item) != 2
            or not isinstance(item[0], str)
            or not isinstance(item[1], int)
            or isinstance(item[1], bool)
        ):
            raise GenotypeError(f"{name} edge {k} must be an [op, input] pair of a string and an integer, got {item!r}")
        edges.append((item[0], item[1]))
    return tuple(edges)


def _concat(value: object, name: str) -> tuple[int, ...]:
    if isinstance(value, range):
        value = list(value)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise GenotypeError(f"{name} must be a list of node indices")
    return tuple(value)


# ----------------------------------------------------------------------------------------- legacy strings


def parse_legacy(text: str, allowed_ops: Iterable[str] | None = None) -> Genotype:
    """Parse a reference-style ``Genotype(normal=[...], normal_concat=range(2, 6), ...)`` string.

    Edges are a flat list of ``('op', input)`` pairs (quark0/darts) or one such list per node
    (pt.darts). Only the call ``Genotype(...)`` with keyword arguments made of lists/tuples of
    ``('op', int)`` pairs, integer lists and ``range(int, int)`` is accepted; anything else
    (names, attribute access, other calls) is refused. Nothing is evaluated.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise GenotypeError(f"legacy genotype string is not valid syntax: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise GenotypeError("legacy genotype string is nested too deeply to be read") from None
    try:
        return _legacy_genotype(tree, allowed_ops)
    except RecursionError:
        raise GenotypeError("legacy genotype string is nested too deeply to be read") from None


def _legacy_genotype(tree: ast.Expression, allowed_ops: Iterable[str] | None) -> Genotype:
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Genotype"):
        raise GenotypeError("legacy genotype string must be a single Genotype(...) call")
    if call.args:
        raise GenotypeError("legacy genotype string must use keyword arguments (normal=..., reduce=...)")
    data = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise GenotypeError("legacy genotype string must not use ** arguments")
        data[kw.arg] = _literal(kw.value)
    for cell in ("normal", "reduce"):
        if cell in data:
            data[cell] = _flatten_nodes(data[cell], cell)
    return Genotype.from_dict(data, allowed_ops)


def _flatten_nodes(edges: object, cell: str) -> object:
    """pt.darts' nested form (one list of ``(op, input)`` pairs per node) as the flat edge list.

    A flat list (quark0/darts: ``[('sep_conv_3x3', 0), ...]``) is returned as it is.
    """
    nested = isinstance(edges, list) and edges and all(
        isinstance(node, list) and node and all(isinstance(edge, list) for edge in node) for node in edges
    )
    if not nested:
        return edges
    for k, node in enumerate(edges):
        if len(node) != EDGES_PER_NODE:
            raise GenotypeError(f"{cell} node {k} has {len(node)} incoming edges; a cell node needs {EDGES_PER_NODE}")
    return [edge for node in edges for edge in node]


def _literal(node: ast.AST):
    """Convert the few node kinds a genotype needs; refuse everything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(elt) for elt in node.elts]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "range"
        and not node.keywords
        and 1 <= len(node.args) <= 2
    ):
        bounds = [_literal(arg) for arg in node.args]
        if not all(isinstance(b, int) for b in bounds):
            raise GenotypeError("range(...) in a legacy genotype string takes integers only")
        start, stop = bounds if len(bounds) == 2 else (0, bounds[0])
        if stop - start > MAX_NODES + 2:  # checked before the list is built: range(2, 10**12) is refused at once
            raise GenotypeError(f"range({start}, {stop}) names {stop - start} nodes; a cell has at most {MAX_NODES}")
        return list(range(start, stop))
    raise GenotypeError(
        f"legacy genotype string contains code that is not allowed: {ast.dump(node)[:60]}; "
        "only lists of ('op', index) pairs and range(a, b) are accepted"
    )


# ----------------------------------------------------------------------------------------- loading


ZOO_PACKAGE = "darts_sg.zoo"


def genotype_dir():
    """The folder of named genotypes (a Path or an importlib Traversable): $DARTS_SG_GENOTYPES when
    set, else the package data `darts_sg.zoo`: the repository's `genotypes/` folder, which the
    package installs under that name (editable or not)."""
    env = os.environ.get("DARTS_SG_GENOTYPES")
    if env:
        return Path(env)
    try:
        return importlib.resources.files(ZOO_PACKAGE)
    except ModuleNotFoundError:  # a source checkout used without installing it
        return Path(__file__).resolve().parents[2] / "genotypes"


def available_genotypes() -> list[str]:
    """Names of the genotypes in the genotypes folder."""
    folder = genotype_dir()
    if not folder.is_dir():
        return []
    return sorted(entry.name[: -len(".json")] for entry in folder.iterdir() if entry.name.endswith(".json"))


def load_genotype(spec: str | os.PathLike | Genotype, allowed_ops: Iterable[str] | None = None) -> Genotype:
    """Load a genotype from a JSON file path, a name in `genotypes/` (case-insensitive), JSON text, or a legacy string."""
    if isinstance(spec, Genotype):
        spec.validate(allowed_ops)
        return spec
    text = str(spec).strip()
    if text.startswith("Genotype("):
        return parse_legacy(text, allowed_ops)
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GenotypeError(f"genotype JSON text is not valid JSON: {exc.msg}") from None
        except RecursionError:
            raise GenotypeError("genotype JSON text is nested too deeply to be read") from None
        return Genotype.from_dict(data, allowed_ops)
    path = Path(text)
    if not path.is_file():
        named = {name.lower(): name for name in available_genotypes()}
        if text.lower() in named:
            path = genotype_dir() / f"{named[text.lower()]}.json"  # a Traversable inside the installed package
        else:
            raise GenotypeError(
                f"genotype {text!r} is neither a file, a legacy Genotype(...) string, nor a known name "
                f"(known: {', '.join(available_genotypes()) or 'none'})"
            )
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GenotypeError(f"cannot read genotype file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise GenotypeError(f"{path} is not a genotype file (not text: a checkpoint or model?); give a genotype JSON file") from None
    if raw.lstrip().startswith("Genotype("):
        return parse_legacy(raw, allowed_ops)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise GenotypeError(f"genotype file {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except RecursionError:
        raise GenotypeError(f"genotype file {path} is nested too deeply to be read") from None
    try:
        return Genotype.from_dict(data, allowed_ops)
    except GenotypeError as exc:
        raise GenotypeError(f"genotype file {path}: {exc}") from None


# ----------------------------------------------------------------------------------------- random baseline


def random_genotype(primitives: Sequence[str], steps: int = 4, seed: int | str = 0) -> Genotype:
    """A genotype drawn uniformly from a space: per node, 2 distinct earlier inputs, each with an op
    drawn uniformly from `primitives` without `none` (the random baseline of Li & Talwalkar 2019).

    The same (primitives, steps, seed) always give the same genotype (Python's own seeded RNG).
    """
    import random

    ops = [name for name in primitives if name != "none"]
    if not ops:
        raise GenotypeError("a random genotype needs at least one op other than 'none'")
    rng = random.Random(seed)

    def cell() -> tuple[Edge, ...]:
        edges: list[Edge] = []
        for node in range(steps):
            for source in sorted(rng.sample(range(node + 2), EDGES_PER_NODE)):
                edges.append((rng.choice(ops), source))
        return tuple(edges)

    concat = tuple(range(2, 2 + steps))
    normal = cell()
    return Genotype(normal=normal, normal_concat=concat, reduce=cell(), reduce_concat=concat)


# ----------------------------------------------------------------------------------------- derivation


def derive_cell(weights: torch.Tensor, primitives: Sequence[str], steps: int) -> tuple[Edge, ...]:
    """Top-2 incoming edges per node by their strongest non-`none` softmax weight.

    `weights` is (num_edges, num_ops), rows ordered node by node, inputs ascending.
    """
    weights = weights.detach().float().cpu()
    keep = [k for k, name in enumerate(primitives) if name != "none"]
    edges: list[Edge] = []
    start = 0
    for node in range(steps):
        n_inputs = node + 2
        block = weights[start : start + n_inputs][:, keep]
        strength = block.max(dim=1).values
        # Stable order: strongest first, ties broken by the lower input index (as sorted() does).
        order = sorted(range(n_inputs), key=lambda i: -strength[i].item())[:EDGES_PER_NODE]
        for i in order:
            edges.append((primitives[keep[int(block[i].argmax())]], i))
        start += n_inputs
    return tuple(edges)


SKIP = "skip_connect"


def _edge_row(k: int, src: int) -> int:
    """Row of the weights matrix of the k-th derived edge (node k // 2) from input `src`."""
    node = k // EDGES_PER_NODE
    return sum(n + 2 for n in range(node)) + src


def cap_skips(weights: torch.Tensor, primitives: Sequence[str], steps: int, max_skip: int) -> tuple[Edge, ...]:
    """Derive a cell with at most `max_skip` skip connections (P-DARTS, Chen et al. 2019).

    While the derived cell has too many `skip_connect` edges, the weakest of them (smallest skip
    weight) loses its skip op and the cell is derived again, so that edge takes its next-best op
    (or gives its place to a stronger edge of the same node).
    """
    weights = weights.detach().float().cpu().clone()
    edges = derive_cell(weights, primitives, steps)
    if SKIP not in primitives:
        return edges
    skip = list(primitives).index(SKIP)
    while sum(op == SKIP for op, _ in edges) > max_skip:
        rows = [_edge_row(k, src) for k, (op, src) in enumerate(edges) if op == SKIP]
        weakest = min(rows, key=lambda row: weights[row, skip].item())
        if weights[weakest, skip] == float("-inf"):  # no other op left on any skip edge
            break
        weights[weakest, skip] = float("-inf")
        edges = derive_cell(weights, primitives, steps)
    return edges


def derive_genotype(
    normal_weights: torch.Tensor,
    reduce_weights: torch.Tensor,
    primitives: Sequence[str],
    steps: int,
    max_skip: int | None = None,
) -> Genotype:
    """Derive the discrete genotype from the softmax of the normal and reduction alphas.

    `max_skip` caps the skip connections of the normal cell (P-DARTS; None = no cap).
    """
    concat = tuple(range(2, 2 + steps))
    if max_skip is None:
        normal = derive_cell(normal_weights, primitives, steps)
    else:
        normal = cap_skips(normal_weights, primitives, steps, max_skip)
    return Genotype(
        normal=normal,
        normal_concat=concat,
        reduce=derive_cell(reduce_weights, primitives, steps),
        reduce_concat=concat,
    )
