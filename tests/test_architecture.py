"""The import graph of src/fxbench against the table of parts in docs/internals.md.

The table ("Parts and arrows") is the one source: each row names a part (a top-level module or
package of ``fxbench``), what it may import and what it must never import. The graph is read
with ``ast`` (no import is executed), counting imports inside functions too; imports under
``if TYPE_CHECKING:`` are annotations only and make no runtime arrow.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "fxbench"
DOC = ROOT / "docs" / "internals.md"
TABLE_TITLE = "## Parts and arrows"

Table = dict[str, tuple[set[str], set[str]]]


# ----------------------------------------------------------------------------- reading the table


def _names(cell: str, foundation: frozenset[str] = frozenset()) -> set[str]:
    """``errors``, ``io`` ... from a table cell (a dash means none); ``F`` stands for the foundation."""
    names = set(re.findall(r"`([A-Za-z_]\w*)`", cell))
    return names | foundation if re.search(r"(?<![`\w])F(?![`\w])", cell) else names


def read_table(doc: Path = DOC) -> Table:
    """{part: (may import, never imports)} from the doc's "Parts and arrows" table."""
    text = doc.read_text(encoding="utf-8")
    assert TABLE_TITLE in text, f"{doc} has no '{TABLE_TITLE}' section"
    section = text.split(TABLE_TITLE, 1)[1].split("\n## ", 1)[0]
    found = re.search(r"foundation F = ([^\n]*(?:\n[^\n|]+)*)", section)
    assert found, "the section defines no foundation F = {...}"
    foundation = frozenset(_names(found.group(1).split(" may be imported")[0]))
    table: Table = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        (part,) = _names(cells[0])
        table[part] = (_names(cells[2], foundation), _names(cells[3]))
    return table


# ----------------------------------------------------------------------------- reading the graph


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement except those in an ``if TYPE_CHECKING:`` body."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[: len(package) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    if "." in base:  # `from fxbench import cli` names a part, not the package's __init__
        yield base
    yield from (f"{base}.{alias.name}" for alias in node.names)


def part_of(module: str, top: str, src: Path) -> str | None:
    """The part a dotted name lands in: ``fxbench.select.seal`` -> ``select``; the package itself
    -> ``fxbench``; a name outside the package -> None."""
    bits = module.split(".")
    if bits[0] != top:
        return None
    if len(bits) == 1:
        return top
    head = bits[1]
    if (src / head).is_dir() or (src / f"{head}.py").is_file():
        return head
    return top  # `from fxbench import __version__`


def import_graph(src: Path = SRC) -> dict[str, dict[str, set[str]]]:
    """{part: {imported part: {"module -> target", ...}}}, arrows between different parts only."""
    top = src.name
    graph: dict[str, dict[str, set[str]]] = {}
    for path in sorted(src.rglob("*.py")):
        module = _module_name(path, src)
        here = part_of(module, top, src)
        assert here is not None
        graph.setdefault(here, {})
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _runtime_imports(tree):
            for target in _targets(node, module, path.name == "__init__.py"):
                there = part_of(target, top, src)
                if there is not None and there != here:
                    graph[here].setdefault(there, set()).add(f"{module} -> {target}")
    return graph


def cycles(graph: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """Strongly connected components with more than one part (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def violations(src: Path, table: Table) -> list[str]:
    """Every arrow the table does not allow, every part it does not list, every package cycle."""
    graph = import_graph(src)
    problems = [f"part `{p}` is not in the table of {DOC.name}: add a row" for p in sorted(set(graph) - set(table))]
    for here, arrows in sorted(graph.items()):
        allowed, never = table.get(here, (set(), set()))
        for there, where in sorted(arrows.items()):
            if there in never or there not in allowed:
                kind = "forbidden" if there in never else "not allowed"
                problems.append(f"{here} -> {there} is {kind}: {sorted(where)[0]}")
    problems += [f"package cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    return problems


# ----------------------------------------------------------------------------- the real package


def test_table_is_consistent() -> None:
    table = read_table()
    assert {"cli", "artifacts", "runtime", "evaluate", "select", "predict", "train"} <= set(table)
    for part, (allowed, never) in table.items():
        assert not allowed & never, f"{part}: {allowed & never} both allowed and forbidden"
        assert part not in allowed
        unknown = (allowed | never) - set(table)
        assert not unknown, f"{part} names parts with no row: {unknown}"
    # The design's fixed prohibitions are in the table (removing one is a design change).
    for part in set(table) - {"cli", "__main__"}:
        assert "cli" in table[part][1], f"{part} must never import cli (the core knows no screen)"
    assert {"models", "train", "predict", "select"} <= table["evaluate"][1]
    assert {"models", "train", "predict"} <= table["select"][1]
    assert {"train", "select"} <= table["predict"][1]
    assert "data" in table["models"][1]


def test_every_part_is_listed_and_no_row_is_stale() -> None:
    table = read_table()
    graph = import_graph()
    assert set(graph) == set(table), (set(graph) - set(table), set(table) - set(graph))


def test_src_fxbench_follows_the_table() -> None:
    assert violations(SRC, read_table()) == []


def test_predict_imports_neither_train_nor_select() -> None:
    arrows = import_graph()["predict"]
    assert "train" not in arrows and "select" not in arrows, arrows


# ----------------------------------------------------------------------------- the checker can fail


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    src = tmp_path / "fxbench"
    for rel, body in files.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
    return src


SYNTHETIC = {
    "__init__.py": "",
    "errors.py": "",
    "evaluate/__init__.py": "from fxbench.errors import *\n",
    "evaluate/metrics.py": "from ..errors import *\n",
    "models/__init__.py": "from fxbench import errors\n",
}
SYNTHETIC_TABLE: Table = {
    "fxbench": (set(), {"cli"}),
    "errors": (set(), {"cli"}),
    "evaluate": ({"errors"}, {"models", "cli"}),
    "models": ({"errors", "evaluate"}, {"cli"}),
}


def test_checker_passes_a_clean_synthetic_tree(tmp_path: Path) -> None:
    assert violations(_tree(tmp_path, SYNTHETIC), SYNTHETIC_TABLE) == []


@pytest.mark.parametrize("line", [
    "from fxbench.models import build\n",              # absolute
    "from ..models import build\n",                     # relative, two levels
    "import fxbench.models.unet\n",                      # plain import
    "def f():\n    from fxbench import models\n",       # inside a function
])
def test_checker_fails_on_a_forbidden_import(tmp_path: Path, line: str) -> None:
    src = _tree(tmp_path, {**SYNTHETIC, "evaluate/metrics.py": "from ..errors import *\n" + line})
    problems = violations(src, SYNTHETIC_TABLE)
    assert len(problems) == 1 and problems[0].startswith("evaluate -> models is forbidden: fxbench.evaluate.metrics"), problems


def test_checker_ignores_annotation_only_imports(tmp_path: Path) -> None:
    body = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fxbench.models import Net\n"
    src = _tree(tmp_path, {**SYNTHETIC, "evaluate/metrics.py": body})
    assert violations(src, SYNTHETIC_TABLE) == []


def test_checker_fails_on_an_unlisted_arrow_and_part(tmp_path: Path) -> None:
    src = _tree(tmp_path, {**SYNTHETIC, "errors.py": "import fxbench.evaluate\n", "extra.py": ""})
    problems = violations(src, SYNTHETIC_TABLE)
    assert "part `extra` is not in the table of internals.md: add a row" in problems
    assert any(p.startswith("errors -> evaluate is not allowed") for p in problems)


def test_checker_fails_on_a_package_cycle(tmp_path: Path) -> None:
    permissive: Table = {**SYNTHETIC_TABLE, "evaluate": ({"errors", "models"}, {"cli"})}
    src = _tree(tmp_path, {**SYNTHETIC, "evaluate/metrics.py": "from fxbench.models import build\n",
                           "models/__init__.py": "from fxbench import evaluate\n"})
    assert violations(src, permissive) == ["package cycle: evaluate <-> models"]
