"""The layers docs/design.md states, checked against the code's own imports: data flows one way, no loops."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ahi_torch"

#: Each top-level module or subpackage of ahi_torch and its layer; a part imports only lower layers.
LAYERS: dict[str, int] = {
    "__init__": 0,
    "errors": 0,
    "crc32": 0,
    "polling": 0,
    "per_process": 0,
    "backoff": 0,
    "counters": 0,
    "client": 1,
    "metadata": 1,
    "index": 2,
    "codecs": 2,
    "cache": 2,
    "fetch": 3,
    "local": 3,  # beside the frame path: client, metadata and codecs only, never the datasets
    "slides": 4,  # whole-slide pyramids: metadata, and tiles through the fetcher
    "datasets": 5,
    "transforms": 5,
    "samplers": 6,
    "config": 7,
    "integrations": 8,  # AHIDataModule.from_config builds from configs
    "sample": 8,  # demo and synthetic data (the demo builds from configs and the local AHI)
    "cli": 10,
    "__main__": 11,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """ahi_torch modules ``path`` imports (top-level statements only, without TYPE_CHECKING blocks)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    nodes: list[ast.AST] = list(tree.body) if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [f"{target}.{alias.name}" for alias in node.names]
            else:
                target = node.module or ""
                names = [f"{target}.{alias.name}" for alias in node.names]
            for name in [target, *names]:
                if name.startswith("ahi_torch"):
                    found.add(name)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("ahi_torch")}
    return found


def _part(module: str) -> str:
    """The top-level module or subpackage a dotted name belongs to (``__init__`` for the package's own names)."""
    parts = module.split(".")
    if len(parts) > 1 and ((PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file()):
        return parts[1]
    return "__init__"


def test_every_part_has_a_layer() -> None:
    parts = {_part(_module_name(path)) for path in PACKAGE.rglob("*.py")}
    assert parts <= set(LAYERS), f"add {sorted(parts - set(LAYERS))} to LAYERS and docs/design.md"


def test_imports_only_go_down_the_layers() -> None:
    upward = []
    for path in PACKAGE.rglob("*.py"):
        source = _part(_module_name(path))
        for target in _imports(path, top_level_only=False):
            part = _part(target)
            if part != source and LAYERS[part] >= LAYERS[source]:
                upward.append(f"{_module_name(path)} imports {target}")
    assert not upward, "\n".join(sorted(upward))


def test_no_import_loops_between_modules() -> None:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        for name in _imports(path, top_level_only=True):
            target = name
            while target and target not in modules:  # "pkg.mod.Name" -> "pkg.mod"
                target = target.rpartition(".")[0]
            if target and target != module and not module.startswith(target + "."):
                graph[module].add(target)
    # Tarjan's strongly connected components: any component of two or more modules is a loop.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    loops: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for module in sorted(modules):
        if module not in index:
            visit(module)
    assert not loops, loops


def test_mutation_groups_name_files_that_exist() -> None:
    """`make mutate` groups name modules and tests by path: a rename must carry them along (a group went stale once)."""
    root = PACKAGE.parent
    groups = sorted((root / "mutation").glob("*.toml"))
    assert groups
    for group in groups:
        # Read as text: tomllib is Python 3.11+, and the package supports 3.10.
        modules = re.search(r"^module-path = (\[.*\])$", group.read_text(), re.M)
        command = re.search(r"^test-command = (.*)$", group.read_text(), re.M)
        assert modules and command, group.name
        named = [*ast.literal_eval(modules.group(1)), *re.findall(r"tests/\S+\.py", command.group(1))]
        missing = [path for path in named if not (root / path).is_file()]
        assert not missing, f"{group.name} names {missing}"


def test_no_function_is_longer_than_a_screen() -> None:
    """Functions of at most 60 lines (ruff's PLR0915 bounds their statements too); split what grows past it."""
    long = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > 60
    ]
    assert not long, long


def test_the_local_backend_owns_every_sql_statement() -> None:
    """moto's split: handlers, the request side and the importer call the backend (local/models), never SQLite."""
    outside = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in (PACKAGE / "local").rglob("*.py")
        if "models" not in path.parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\.execute(many|script)?\(|\b(SELECT|INSERT|UPDATE|DELETE)\s", line)
    ]
    assert not outside, "SQL outside ahi_torch/local/models: " + ", ".join(outside)


def test_tests_mirror_the_package() -> None:
    """Each folder of tests/ holds the tests of the ahi_torch package of the same name."""
    tests = Path(__file__).resolve().parent
    folders = {path.name for path in tests.iterdir() if path.is_dir() and (path / "__init__.py").exists()}
    packages = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    assert folders <= packages, f"test folders without a package: {sorted(folders - packages)}"
