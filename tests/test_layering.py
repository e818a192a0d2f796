"""Imports follow the data flow: no module of ``modelmint`` imports from a layer above its own,
not even lazily inside a function, and no two packages import each other in a cycle.

Each top-level package or module of ``src/modelmint`` sits in one layer of :data:`LAYERS`,
lowest first. A module may import its own layer and the layers below it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pytest

PACKAGE = "modelmint"
SOURCE_ROOT = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# (layer name, the top-level packages and modules in it): lowest first. ``__init__`` is the
# package's own ``modelmint/__init__.py``; a pattern matches the names it covers.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bottom", ("errors", "_tensor_names", "_onnx_check", "_settings*")),
    ("_data", ("_data",)),
    ("_repository", ("_repository",)),
    ("_serve", ("_serve",)),
    ("_profile", ("_profile",)),
    ("_train", ("_train",)),
    ("_tasks", ("_tasks",)),
    ("_search", ("_search",)),
    ("_optimize", ("_optimize",)),
    ("_app", ("_app",)),
    ("top", ("_client", "cli", "_cli_common", "_cli_convert", "_cli_serving", "_cli_train",
             "_demo", "_live_stats", "_api", "__init__")),
)


class UnplacedModule(LookupError):
    """A top-level package or module that :data:`LAYERS` does not name."""


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    line: int
    target: str  # the imported module, dotted and absolute


def unit_of(module: str) -> str:
    """The top-level package or module of ``modelmint`` that ``module`` belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of the layer holding ``module``."""
    unit = unit_of(module)
    for index, (_, members) in enumerate(LAYERS):
        if any(fnmatch(unit, pattern) for pattern in members):
            return index
    raise UnplacedModule(f"{PACKAGE}.{unit} is in no layer: place it in the layer table "
                         f"(LAYERS in {Path(__file__).name}) at the layer of what it imports "
                         "and of what imports it")


def _is_submodule(dotted: str) -> bool:
    path = SOURCE_ROOT.joinpath(*dotted.split(".")[1:])
    return path.is_dir() or path.with_suffix(".py").is_file()


def imports_in(module: str, source: str, is_package: bool = False) -> list[Import]:
    """Every import of ``modelmint`` in the source, at any depth (functions, ``if`` blocks,
    ``TYPE_CHECKING``), relative ones resolved. ``from modelmint import x`` targets the
    submodule ``x`` where one exists, else the package's ``__init__``."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(module, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target == PACKAGE:
                for alias in node.names:
                    inner = f"{PACKAGE}.{alias.name}"
                    found.append(Import(module, node.lineno,
                                        inner if _is_submodule(inner) else target))
            else:
                found.append(Import(module, node.lineno, target))
    return [i for i in found if i.target == PACKAGE or i.target.startswith(f"{PACKAGE}.")]


def upward_imports(imports: list[Import]) -> list[str]:
    """``module:line -> target (layer < layer)`` for each import of a higher layer."""
    out = []
    for i in imports:
        own, theirs = layer_of(i.module), layer_of(i.target)
        if theirs > own:
            out.append(f"{i.module}:{i.line} -> {i.target} "
                       f"({LAYERS[own][0]} < {LAYERS[theirs][0]})")
    return out


def package_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path that ends where it starts, or ``None`` (a DFS that
    meets a node still on its stack has found a cycle)."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> list[str] | None:
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt in on_stack:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in done:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        on_stack.discard(node)
        done.add(node)
        return None

    for start in sorted(edges):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def _module_name(path: Path) -> tuple[str, bool]:
    parts = path.relative_to(SOURCE_ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def all_imports() -> list[Import]:
    found: list[Import] = []
    for path in sorted(SOURCE_ROOT.rglob("*.py")):
        module, is_package = _module_name(path)
        found += imports_in(module, path.read_text(encoding="utf-8"), is_package)
    return found


def test_every_top_level_module_has_a_layer() -> None:
    units = {unit_of(_module_name(p)[0]) for p in SOURCE_ROOT.rglob("*.py")}
    unplaced = []
    for unit in sorted(units):
        try:
            layer_of(f"{PACKAGE}.{unit}" if unit != "__init__" else PACKAGE)
        except UnplacedModule as exc:
            unplaced.append(str(exc))
    assert not unplaced, "\n".join(unplaced)


def test_no_module_imports_a_higher_layer() -> None:
    imports = all_imports()
    assert len(imports) > 100, f"too few imports found under {SOURCE_ROOT}: is it the source?"
    try:
        violations = upward_imports(imports)
    except UnplacedModule as exc:
        pytest.fail(str(exc))
    assert not violations, "imports from a higher layer:\n" + "\n".join(violations)


def test_no_import_cycle_between_packages() -> None:
    edges: dict[str, set[str]] = {}
    for i in all_imports():
        mine, theirs = unit_of(i.module), unit_of(i.target)
        if mine != theirs:
            edges.setdefault(mine, set()).add(theirs)
    cycle = package_cycle(edges)
    assert cycle is None, "packages importing each other: " + " -> ".join(cycle or [])


def test_the_checker_catches_a_lazy_upward_import_and_passes_downward_ones() -> None:
    source = ("from ..errors import MintError\n"
              "from .. import _tensor_names\n"
              "from .frozen import OnnxFrozenPrefix\n"
              "def build():\n"
              "    from .._train.backbone import MOBILENET_V2\n"
              "    import modelmint._app.db\n")
    found = imports_in(f"{PACKAGE}._profile.workload", source)
    assert [i.target for i in found] == [
        f"{PACKAGE}.errors", f"{PACKAGE}._tensor_names", f"{PACKAGE}._profile.frozen",
        f"{PACKAGE}._train.backbone", f"{PACKAGE}._app.db"]
    assert upward_imports(found) == [
        f"{PACKAGE}._profile.workload:5 -> {PACKAGE}._train.backbone (_profile < _train)",
        f"{PACKAGE}._profile.workload:6 -> {PACKAGE}._app.db (_profile < _app)"]


def test_a_package_init_resolves_relative_imports_from_itself() -> None:
    found = imports_in(f"{PACKAGE}._serve", "from .worker import main\nfrom .. import cli\n",
                       is_package=True)
    assert [i.target for i in found] == [f"{PACKAGE}._serve.worker", f"{PACKAGE}.cli"]
    assert upward_imports(found) == [f"{PACKAGE}._serve:2 -> {PACKAGE}.cli (_serve < top)"]


def test_an_unplaced_module_is_named_with_where_to_place_it() -> None:
    with pytest.raises(UnplacedModule, match=r"modelmint\._newcomer .*layer table"):
        upward_imports(imports_in(f"{PACKAGE}._newcomer", "from .errors import MintError\n"))


def test_the_cycle_search_finds_a_cycle_and_only_a_cycle() -> None:
    assert package_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"b", "c"}}) is None
    assert package_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        "a", "b", "c", "a"]
