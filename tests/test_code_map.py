"""The README's code map is true: every module is listed, sits in its room, and imports only what its row allows."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "darts_sg"


def _rows() -> list[tuple[str, set[str]]]:
    """(path under darts_sg/ without .py, the module names it may import), top row first."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Code map", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z0-9_/]+)\.py` \|[^|]*\| ([^|]*) \|$", section, flags=re.MULTILINE)
    return [(path, {name.strip() for name in allowed.split(",") if name.strip() != "(none)"}) for path, allowed in rows]


def _name(path: str) -> str:
    return path.split("/")[-1]


def _room(path: str) -> str:
    return path.split("/")[0] if "/" in path else ""


def _package_imports(path: Path) -> set[str]:
    """The darts_sg modules (by name) that the file at `path` imports, at any depth of the file."""
    here = path.relative_to(PACKAGE).with_suffix("").parts[:-1]  # the file's package, under darts_sg
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - (node.level - 1)]
            target = (*base, *(node.module.split(".") if node.module else ()))
            if target and (PACKAGE.joinpath(*target).with_suffix(".py")).exists():
                imported.add(target[-1])
            else:  # `from .room import module, ...`
                imported.update(alias.name for alias in node.names if PACKAGE.joinpath(*target, alias.name + ".py").exists())
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("darts_sg."):
            imported.add(node.module.split(".")[-1])
    return imported


def test_every_module_is_in_the_code_map_and_imports_only_what_it_may():
    rows = dict(_rows())
    modules = {str(p.relative_to(PACKAGE).with_suffix("")): p for p in PACKAGE.rglob("*.py") if p.stem != "__init__" or p.parent == PACKAGE}
    assert set(rows) == set(modules), "README code map and darts_sg/ list different modules"
    assert len({_name(path) for path in rows}) == len(rows), "two modules share a name"
    for name, path in modules.items():
        extra = _package_imports(path) - rows[name]
        assert not extra, f"{name}.py imports {sorted(extra)}, which its code-map row does not allow"


def test_data_flows_down_the_code_map():
    """A module may import only modules listed below it: no cycle, nothing reaches back up."""
    rows = _rows()
    for position, (path, allowed) in enumerate(rows):
        above = allowed & {_name(p) for p, _ in rows[: position + 1]}
        assert not above, f"{path}.py may import {sorted(above)}, listed above it (or itself)"


def test_each_room_is_one_block_of_the_map():
    """The rooms (subpackages) stand in the table as blocks, so that no room imports a room above it."""
    rooms = [_room(path) for path, _ in _rows()]
    blocks = [room for k, room in enumerate(rooms) if k == 0 or rooms[k - 1] != room]
    assert len(blocks) == len(set(blocks)), f"a room is split in the code map: {blocks}"
    assert all((PACKAGE / room / "__init__.py").exists() for room in set(rooms) if room)
