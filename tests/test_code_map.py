"""The README's code map is true: every module is listed and imports only what its row allows."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _code_map() -> dict[str, set[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Code map", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z0-9_]+)\.py` \|[^|]*\| ([^|]*) \|$", section, flags=re.MULTILINE)
    return {module: {name.strip() for name in allowed.split(",") if name.strip() != "(none)"} for module, allowed in rows}


def _package_imports(path: Path) -> set[str]:
    """The darts_sg modules that `path` imports (relative imports, at any depth of the file)."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                imported.add(node.module.split(".")[0])
            else:
                imported.update(alias.name for alias in node.names)
    return imported


def test_every_module_is_in_the_code_map_and_imports_only_what_it_may():
    code_map = _code_map()
    modules = {p.stem: p for p in (ROOT / "darts_sg").glob("*.py")}
    assert set(code_map) == set(modules), "README code map and darts_sg/ list different modules"
    for name, path in modules.items():
        extra = _package_imports(path) - code_map[name]
        assert not extra, f"{name}.py imports {sorted(extra)}, which its code-map row does not allow"


def test_data_flows_down_the_code_map():
    """A module may import only modules listed below it: no cycle, nothing reaches back up."""
    order = list(_code_map())
    for position, (module, allowed) in enumerate(_code_map().items()):
        above = allowed & set(order[: position + 1])
        assert not above, f"{module}.py may import {sorted(above)}, listed above it (or itself)"
