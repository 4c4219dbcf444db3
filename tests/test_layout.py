"""The shape of the house, checked: layers import only downward, no module cycles, short
functions, framework choice only in the twins' adapters, and an installable package."""
import ast
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Layers from the bottom: each may import only its own and those below it.
LAYERS = ["models", "convert", "parity", "runtimes", "front"]
FRONT = ("maeconv", "maeconv.__main__", "maeconv.errors")  # the front door; errors is a leaf any layer uses
ENTRY_SCRIPTS = ("maeconv.runtimes.ascend.train",)  # run as files, they call the CLI
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    modules = {"maeconv": ROOT / "__init__.py", "maeconv.__main__": ROOT / "__main__.py",
               "maeconv.errors": ROOT / "errors.py"}
    for folder in ("models", "convert", "parity", "runtimes", "cli"):
        for path in (ROOT / folder).rglob("*.py") if (ROOT / folder).is_dir() else ():
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(("maeconv", *(parts[:-1] if parts[-1] == "__init__" else parts)))] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every maeconv module `name` imports, at the top or inside functions."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
            found.update(subs if len(subs) == len(node.names) else [base, *subs])
    return {module for module in found if module in modules and module != name}


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> int:
    if module in FRONT or module.startswith("maeconv.cli"):
        return LAYERS.index("front")
    return LAYERS.index(module.split(".")[1])


def test_layers_import_only_downward(graph):
    upward = [f"{module} -> {target}" for module, targets in graph.items() if module not in ENTRY_SCRIPTS
              for target in targets if _layer(target) > _layer(module) and target != "maeconv.errors"]
    assert upward == []


def test_no_module_imports_itself_through_others(graph):
    def reaches(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo += graph[module]
        return seen

    packages_with_children = {name for name in graph if any(other.startswith(name + ".") for other in graph)}
    cycles = sorted(module for module in graph if module not in packages_with_children and module in reaches(module))
    assert cycles == []


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


FRAMEWORK_TEST = re.compile(r"""(==|!=|\bin\b)\s*\(?\s*(TORCH|MINDSPORE|["'](torch|mindspore)["'])\b""")
ADAPTERS = ("models/twins.py", "models/torch/twin.py", "models/mindspore/twin.py")


def test_a_framework_is_chosen_only_by_the_twins_registry():
    branches = []
    for path in _modules().values():
        relative = path.relative_to(ROOT).as_posix()
        for number, line in enumerate(path.read_text().splitlines(), 1):
            iterating = line.lstrip().startswith("for ")
            if FRAMEWORK_TEST.search(line) and not iterating and relative not in ADAPTERS:
                branches.append(f"{relative}:{number}: {line.strip()}")
    assert branches == []


def test_the_package_list_names_every_package_folder():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    def is_code(parts) -> bool:  # not tests, environments or build outputs
        return not parts or parts[0] not in ("tests", "build", "dist") and not parts[0].startswith(".")

    folders = {".".join(("maeconv", *p.parent.relative_to(ROOT).parts)) for p in ROOT.rglob("__init__.py")
               if is_code(p.parent.relative_to(ROOT).parts)}
    assert set(setuptools["packages"]) == folders


@pytest.mark.slow
def test_a_built_wheel_holds_every_module_and_data_file(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    names = set(zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist())
    expected = {"maeconv/" + path.relative_to(ROOT).as_posix() for path in _modules().values()}
    expected |= {"maeconv/runtimes/imagenet_classes.tsv", "maeconv/runtimes/ascend/configs/vit_eval.yaml"}
    assert expected <= names
    assert not any(name.startswith("maeconv/tests/") for name in names)
