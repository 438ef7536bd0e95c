"""The repository's architecture, checked from the source with ``ast``: imports flow one way down the layers
below, entry points are imported by nothing, entry points stay small and functions short, and nothing
edits ``sys.path``."""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("modules", "synth", "tools", "mask_create")
ENTRY_POINTS = ("train", "test", "demo", "bench", "hubconf")

#: every module of the repository and its layer; a module may import modules of its own layer or below
LAYERS: dict[int, tuple[str, ...]] = {
    0: ("modules.*",),  # building blocks: layers, losses, augmentation, the K-means rule
    1: ("config", "tokenizer", "utils", "lmdb_io", "distributed", "flops", "synth.*"),  # synth: the data engine
    2: ("dataset", "samplers", "model", "optimization"),
    3: ("checkpoint", "evaluation", "loaders"),
    4: ("inference", "benchmarks", "engine", "char_attention", "onnx_export"),
    5: ("benchmarking",),
    6: ("tools.*", "mask_create.*"),
    7: ENTRY_POINTS,
}
MAX_ENTRY_POINT_LINES = 200
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


@lru_cache(maxsize=1)
def repository_modules() -> dict[str, Path]:
    """Every Python module of the repository outside tests/, by dotted name (packages' __init__ excluded)."""
    paths = [*ROOT.glob("*.py"), *(p for package in PACKAGES for p in (ROOT / package).glob("*.py"))]
    return {module_name(p): p for p in paths if p.name != "__init__.py"}


def layer_of(name: str) -> int:
    for layer, members in LAYERS.items():
        if name in members or any(m.endswith(".*") and name.startswith(m[:-1]) for m in members):
            return layer
    raise KeyError(name)


def imported_modules(path: Path) -> set[str]:
    """The repository modules ``path`` imports (at any depth of the file), by dotted name."""
    known = repository_modules()
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def test_every_module_has_a_layer():
    unplaced = [name for name in repository_modules() if not any(
        name in members or any(m.endswith(".*") and name.startswith(m[:-1]) for m in members)
        for members in LAYERS.values())]
    assert not unplaced, f"add these modules to LAYERS: {unplaced}"


def test_imports_never_go_up_a_layer():
    upward = [f"{name} (layer {layer_of(name)}) imports {imported} (layer {layer_of(imported)})"
              for name, path in repository_modules().items() for imported in imported_modules(path)
              if layer_of(imported) > layer_of(name)]
    assert not upward, "\n".join(upward)


def test_entry_points_are_imported_by_nothing():
    importers = [*repository_modules().values(), *(ROOT / "tests").glob("*.py")]
    offenders = [f"{path.relative_to(ROOT)} imports {name}" for path in importers
                 for name in imported_modules(path) if name in ENTRY_POINTS]
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_points_are_small(name):
    lines = len((ROOT / f"{name}.py").read_text().splitlines())
    assert lines <= MAX_ENTRY_POINT_LINES, f"{name}.py has {lines} lines"


def test_functions_are_short():
    long = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in repository_modules().values() for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, "\n".join(long)


def test_nothing_edits_sys_path():
    offenders = [str(path.relative_to(ROOT)) for path in [*repository_modules().values(), *(ROOT / "tests").glob("*.py")]
                 if "sys.path.insert" in path.read_text() or "sys.path.append" in path.read_text()]
    assert offenders == [path for path in offenders if path == "tests/test_layout.py"]


def test_the_layout_checks_can_fail(tmp_path):
    """The checks see a violation: an upward import and a long function, parsed from a planted file."""
    planted = tmp_path / "planted.py"
    planted.write_text("import train\nfrom model import build_model\n\ndef f():\n" + "    x = 1\n" * 70)
    assert imported_modules(planted) == {"train", "model"}
    tree = ast.parse(planted.read_text())
    function = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))
    assert function.end_lineno - function.lineno + 1 > MAX_FUNCTION_LINES
    assert layer_of("train") > layer_of("model") > layer_of("modules.losses")
