"""The package's layers, read from its source with `ast` (nothing is imported): no library
module imports a command line, and no import cycle, not even through an import inside a
function or under `if TYPE_CHECKING:` (a module that needs one from a layer above it is in
the wrong layer)."""

import ast
from pathlib import Path

from conftest import ROOT

# Thin modules that keep `python -m fastvideo_grpo.<name>` working: command lines, like cli/.
ENTRY_MODULES = ("train", "evaluate", "export", "plan", "plot", "ablate", "pretrain")


def package_modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of `root`/`package`."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def is_command_line(module: str, package: str) -> bool:
    """A command line: cli/, a thin entry module or a `__main__` module. Only these import one."""
    return (module == f"{package}.cli" or module.startswith(f"{package}.cli.")
            or module in {f"{package}.{name}" for name in ENTRY_MODULES} or module.endswith(".__main__"))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.Module, module_level: bool) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, or (module_level) those that run when the module is imported:
    not in a function body, nor under `if TYPE_CHECKING:`."""
    if not module_level:
        return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
        else:
            todo.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))
    return found


def imported_modules(name: str, path: Path, modules: dict[str, Path], module_level: bool) -> list[tuple[str, int]]:
    """(module of the package, line) for each import in `path` (module `name`): the module a
    name is, else the module it is taken from."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in _import_nodes(ast.parse(path.read_text(), str(path)), module_level):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        resolved = []
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a function c: module a.b
                target = target.rpartition(".")[0]
            if target and target != name and target not in resolved:
                resolved.append(target)
        found += [(target, node.lineno) for target in resolved]
    return found


def command_line_imports(root: Path, package: str) -> list[str]:
    """'module (file:line) imports command line X' for each library module that imports a
    command-line module, at module level or in a function."""
    modules = package_modules(root, package)
    return [f"{name} ({path.relative_to(root)}:{line}) imports the command line {target}"
            for name, path in modules.items() if not is_command_line(name, package)
            for target, line in imported_modules(name, path, modules, module_level=False)
            if is_command_line(target, package)]


def import_cycles(root: Path, package: str, module_level: bool = False) -> list[list[str]]:
    """The import cycles (`module_level`: through imports that run when a module is imported
    only): each a list of modules, every one importing the next and the last the first."""
    modules = package_modules(root, package)
    graph = {name: sorted({t for t, _ in imported_modules(name, path, modules, module_level)})
             for name, path in modules.items()}
    cycles, done = [], set()
    for start in sorted(graph):
        # Depth-first from `start` over modules not yet done: a path back to `start` is a cycle.
        stack, on_path, seen = [iter(graph[start])], [start], {start}
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                on_path.pop()
            elif child == start:
                cycles.append(list(on_path))
                break
            elif child not in done and child not in seen:
                seen.add(child)
                stack.append(iter(graph[child]))
                on_path.append(child)
        done.add(start)
    return cycles


def test_no_library_module_imports_a_command_line():
    offending = command_line_imports(ROOT, "fastvideo_grpo")
    assert not offending, "library modules import command lines (cli/ and the entry modules):\n" + "\n".join(offending)


def test_no_import_cycle():
    cycles = import_cycles(ROOT, "fastvideo_grpo")
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c + c[:1]) for c in cycles)


def test_the_checks_find_a_command_line_import_and_a_cycle(tmp_path):
    files = {
        "pkg/__init__.py": "",
        "pkg/cli/__init__.py": "",
        "pkg/cli/evaluate.py": "from pkg.training import loop\n",
        "pkg/evaluate.py": "from pkg.cli.evaluate import main\n",
        "pkg/models/__main__.py": "import pkg.cli.evaluate\n",
        "pkg/training/__init__.py": "",
        # A command line imported in a function counts; `if TYPE_CHECKING:` does not import.
        "pkg/training/loop.py": ("from typing import TYPE_CHECKING\nfrom . import state\nif TYPE_CHECKING:\n"
                                 "    from pkg.rewards import judge\n\ndef run():\n    from pkg.evaluate import main, parse\n"),
        "pkg/training/state.py": "from pkg.rewards.judge import score, weigh\n",
        "pkg/rewards/__init__.py": "",
        # A function-level import runs after both modules exist, yet still ties the layers in a circle.
        "pkg/rewards/judge.py": "import pkg.training.loop as loop\n\ndef score():\n    from pkg.cli import evaluate\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert command_line_imports(tmp_path, "pkg") == [
        f"pkg.rewards.judge ({Path('pkg/rewards/judge.py')}:4) imports the command line pkg.cli.evaluate",
        f"pkg.training.loop ({Path('pkg/training/loop.py')}:7) imports the command line pkg.evaluate",
    ]
    assert import_cycles(tmp_path, "pkg", module_level=True) == [
        ["pkg.rewards.judge", "pkg.training.loop", "pkg.training.state"]]
    (tmp_path / "pkg/rewards/judge.py").write_text("def score():\n    import pkg.training.loop\n")
    assert import_cycles(tmp_path, "pkg", module_level=True) == []
    # Counting every import: the function-level one and the one under TYPE_CHECKING close circles.
    assert import_cycles(tmp_path, "pkg") == [["pkg.cli.evaluate", "pkg.training.loop", "pkg.evaluate"],
                                              ["pkg.rewards.judge", "pkg.training.loop"]]


# Folders that import each other today, each for a reason; a new pair is a layer out of place.
TWO_WAY_FOLDERS = {
    # config.validate asks algorithms/config_checks.py, which imports nothing of the package.
    ("algorithms", "config"),
    # A family's encoder writes shards with data/preprocess.py; data reads them as models' TextConditioning.
    ("data", "models"),
    # fsdp.py asks the family for its SP processor; the processor runs its collectives from parallel/.
    ("models", "parallel"),
    # A Policy steps with sampling's samplers; the rollout drives a Policy.
    ("models", "sampling"),
    # The reward process ignores the signals the training loop defers (training/preemption.py).
    ("rewards", "training"),
}


def folder_of(module: str) -> str:
    """fastvideo_grpo.X.Y -> X (a folder or a top-level module)."""
    return module.split(".")[1] if "." in module else module


def two_way_folders(root: Path, package: str) -> set[tuple[str, str]]:
    """Pairs of the package's folders (or top-level modules) that import each other."""
    modules = package_modules(root, package)
    edges = {(folder_of(name), folder_of(target)) for name, path in modules.items()
             for target, _ in imported_modules(name, path, modules, module_level=False)}
    return {(a, b) for a, b in edges if a < b and a != b and (b, a) in edges}


def test_no_new_pair_of_folders_imports_each_other():
    assert two_way_folders(ROOT, "fastvideo_grpo") <= TWO_WAY_FOLDERS
