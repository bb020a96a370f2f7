"""The code's shape, measured: function lengths and docstrings over the production
packages. `python -m tests.support.shape [ROOT]` prints the figures (the code-shape test
keeps the limits)."""

import ast
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

PRODUCTION = (
    "schemas", "runtime", "jobs", "ingest", "streams", "api", "photo_worker", "notifier",
    "infra", "bench", "cli",
)  # fmt: skip


@dataclass(frozen=True)
class Definition:
    """A function or a public class: where it is, and its length or its docstring."""

    where: str
    name: str
    lines: int
    documented: bool


def modules(root: Path) -> list[tuple[Path, ast.Module]]:
    return [
        (path, ast.parse(path.read_text()))
        for package in PRODUCTION
        if (root / package).is_dir()
        for path in sorted((root / package).rglob("*.py"))
    ]


def _definition(
    root: Path, path: Path, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
) -> Definition:
    lines = (node.end_lineno or node.lineno) - node.lineno + 1
    where = f"{path.relative_to(root)}:{node.lineno}"
    return Definition(where, node.name, lines, ast.get_docstring(node) is not None)


def functions(root: Path) -> list[Definition]:
    return [
        _definition(root, path, node)
        for path, tree in modules(root)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]


def public_classes(root: Path) -> list[Definition]:
    return [
        _definition(root, path, node)
        for path, tree in modules(root)
        for node in tree.body
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_")
    ]


def main(root: Path) -> None:
    lengths = sorted(f.lines for f in functions(root))
    longest = sorted(functions(root), key=lambda f: -f.lines)[:5]
    classes = public_classes(root)
    print(
        f"functions {len(lengths)}: median {statistics.median(lengths)} lines,"
        f" p90 {lengths[int(len(lengths) * 0.9)]}, max {lengths[-1]},"
        f" over 100: {sum(n > 100 for n in lengths)}, over 40: {sum(n > 40 for n in lengths)}"
    )
    for f in longest:
        print(f"  {f.lines:4d} {f.where} {f.name}")
    bare = sum(not c.documented for c in classes)
    print(f"public classes without a docstring: {bare}/{len(classes)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd())
