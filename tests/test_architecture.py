"""The package dependency graph: imports point the way data flows (no new package cycles)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).parents[1] / "rpa_bench"
# The flow: conf -> workloads -> kernels -> measure (parallel) -> roofline -> store -> reports.
KNOWN_CYCLES: set[tuple[str, ...]] = set()


def _runtime_imports(tree: ast.AST):
    """Imports that run (those under ``if TYPE_CHECKING:`` do not)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip:
            yield from ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""])


def package_graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT).parts
        pkg = parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")
        for mod in _runtime_imports(ast.parse(f.read_text())):
            if mod.startswith("rpa_bench."):
                target = mod.split(".")[1]
                if target != pkg:
                    edges[pkg].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Every package cycle, as the sorted tuple of its packages (DFS over the package graph)."""
    found = set()

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in edges.get(node, ()):
            if nxt == start:
                found.add(tuple(sorted(path)))
            elif nxt not in path and nxt > start:
                walk(start, nxt, [*path, nxt])

    for start in list(edges):
        walk(start, start, [start])
    return found


def test_no_package_cycles():
    cycles = _cycles(package_graph())
    assert cycles <= KNOWN_CYCLES, f"new package cycles: {sorted(cycles - KNOWN_CYCLES)}"


def test_measure_drives_parallel_and_reports_never_import_kernels_or_the_timer():
    g = package_graph()
    assert "measure" not in g["parallel"]
    assert "kernels" not in g["reports"] and "parallel" not in g["reports"]
    assert "kernels" not in g["roofline"]


def test_packages_import_only_down_the_flow():
    g = package_graph()
    assert g["workloads"] <= {"typed"}, "workloads are the base: they know no device, kernel or timer"
    assert "measure" not in g["store"] and "reports" not in g["store"], "the store is the contract, not a client"
    assert not g["roofline"] & {"measure", "store", "reports", "parallel"}
    assert not g["reports"] & {"kernels", "parallel", "commands"}


def _function_level_imports():
    """(file:line, text) of every rpa_bench import inside a function body, with its comment."""
    for f in sorted(ROOT.rglob("*.py")):
        text = f.read_text()
        lines = text.splitlines()
        tree = ast.parse(text)
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                for n in ast.walk(node)}
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip:
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    if any(n == "rpa_bench" or n.startswith("rpa_bench.") for n in names):
                        yield f"{f.relative_to(ROOT.parent)}:{node.lineno}", lines[node.lineno - 1]


def _says_why(line: str) -> bool:
    """The import's comment gives a reason in words (a bare ``# noqa`` or ``#`` is none)."""
    import re

    if "#" not in line:
        return False
    comment = line.split("#", 1)[1]
    comment = re.sub(r"^\s*noqa(:\s*[A-Z]+\d+(,\s*[A-Z]+\d+)*)?\s*(-\s*)?", "", comment)
    return len(re.findall(r"[A-Za-z]{2,}", comment)) >= 3


def test_the_reason_check_rejects_a_bare_comment():
    assert not _says_why("    from rpa_bench.x import y  #")
    assert not _says_why("    from rpa_bench.x import y  # noqa: F401")
    assert _says_why("    from rpa_bench.x import y  # imports JAX: loaded when the command runs")


def test_function_level_imports_say_why():
    """An rpa_bench import inside a function is allowed only where a heavy import (JAX) at
    start-up or a process boundary justifies it, and the line says so."""
    unexplained = [f"{where}: {line.strip()}" for where, line in _function_level_imports() if not _says_why(line)]
    assert not unexplained, "imports inside functions without a reason:\n" + "\n".join(unexplained)
    assert all(where.startswith(("rpa_bench/commands/", "rpa_bench/kernels/compiling.py"))
               for where, _ in _function_level_imports())


def test_the_pipeline_drives_measure_and_nothing_below_knows_it():
    g = package_graph()
    assert "pipeline" in g["commands"]
    for pkg in ("measure", "kernels", "workloads", "roofline", "store", "reports", "parallel"):
        assert "pipeline" not in g[pkg], f"{pkg} imports the pipeline"
    assert not g["measure"] & {"store", "reports"}, "measure only measures: it knows no run store or report"


def test_measure_is_a_small_share_of_the_code():
    def lines(paths):
        return sum(len(p.read_text().splitlines()) for p in paths)

    total = lines(ROOT.rglob("*.py"))
    assert lines((ROOT / "measure").rglob("*.py")) <= 0.15 * total


def test_only_the_store_adds_row_columns():
    """A row is built in one place (rpa_bench.store.rows.build_row): no other module assigns
    a row column by key."""
    import re

    from rpa_bench.store.row import COLUMNS

    pattern = re.compile(r"\b(?:row|r|cols|more|rec)\[[\"'](\w+)[\"']\]\s*=[^=]|\b(?:row|r|cols)\.update\(")
    offenders = []
    for f in ROOT.rglob("*.py"):
        if f.relative_to(ROOT).parts[0] == "store":
            continue
        for n, line in enumerate(f.read_text().splitlines(), 1):
            for name in pattern.findall(line) or ([""] if ".update(" in line and pattern.search(line) else []):
                if name in COLUMNS or name == "":
                    offenders.append(f"{f.relative_to(ROOT.parent)}:{n}: {line.strip()}")
    assert not offenders, "row columns set outside the store:\n" + "\n".join(offenders)


def test_the_columns_page_is_generated_from_the_row():
    from rpa_bench.store.row import columns_markdown

    assert (ROOT.parent / "docs" / "columns.md").read_text() == columns_markdown(), \
        "docs/columns.md is stale: python -m rpa_bench.store.row > docs/columns.md"
