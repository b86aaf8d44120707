"""Imports flow one way: no module of jsqa_cli imports one that imports it back, not even lazily (inside a
function), and ``--help`` never imports torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import jsqa_cli

PACKAGE_DIR = Path(jsqa_cli.__file__).parent


def _module_name(path: Path, package_dir: Path) -> str:
    parts = (package_dir.name, *path.relative_to(package_dir).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """module → the package's modules it imports anywhere in its source (top level, functions, branches), and
    the packages above it (importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first)."""
    files = {_module_name(p, package_dir): p for p in package_dir.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        deps = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}  # parent packages
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, one level up per extra dot
                    pkg = name.split(".") if is_package else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join([*pkg, base] if base else pkg)
                # `from pkg import sub` imports the submodule pkg.sub when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:  # `import a.b.c` where only a.b is ours
                    target = target.rpartition(".")[0]
                if target:
                    deps.add(target)
        deps.discard(name)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "jsqa_cli"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from jsqa_cli import b\n")
    (pkg / "b.py").write_text("def f():\n    from .sub import c\n")
    (pkg / "sub" / "c.py").write_text("import os\n")
    graph = import_graph(pkg)
    assert graph["jsqa_cli.a"] == {"jsqa_cli", "jsqa_cli.b"}
    assert graph["jsqa_cli.b"] == {"jsqa_cli", "jsqa_cli.sub.c"}
    assert find_cycle(graph) is None
    (pkg / "sub" / "c.py").write_text("def g():\n    import jsqa_cli.a.x\n")  # lazy, and a.x is not a module
    assert find_cycle(import_graph(pkg)) == ["jsqa_cli.a", "jsqa_cli.b", "jsqa_cli.sub.c", "jsqa_cli.a"]


def test_no_import_cycles():
    graph = import_graph()
    assert {"jsqa_cli.model", "jsqa_cli.hub", "jsqa_cli.resolve", "jsqa_cli.cli"} <= set(graph)
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))


def test_model_loading_imports_flow_one_way():
    graph = import_graph()
    assert "jsqa_cli.resolve" in graph["jsqa_cli.model"] and "jsqa_cli.model" in graph["jsqa_cli.hub"]
    assert "jsqa_cli.hub" not in graph["jsqa_cli.model"]
    assert not graph["jsqa_cli.resolve"] - {"jsqa_cli"}  # below model and hub: imports neither


HELP_WITHOUT_TORCH = """
import sys
from typer.testing import CliRunner
from jsqa_cli.cli import app

def commands(group, prefix=()):
    for cmd in group.registered_commands:
        yield (*prefix, cmd.name or cmd.callback.__name__.replace("_", "-"))
    for sub in group.registered_groups:
        name = sub.name or sub.typer_instance.info.name
        yield (*prefix, name)
        yield from commands(sub.typer_instance, (*prefix, name))

runner = CliRunner()
paths = [(), *commands(app)]
for path in paths:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, (path, result.output)
heavy = sorted(m for m in ("torch", "torchaudio", "pandas", "numpy", "huggingface_hub") if m in sys.modules)
print(len(paths), " ".join(heavy) or "-")
"""


def test_help_imports_no_torch():
    """Every ``--help`` (the app's and each command's) runs without importing torch or the other heavy libraries,
    in a fresh interpreter so that nothing this test session imported counts."""
    out = subprocess.run([sys.executable, "-c", HELP_WITHOUT_TORCH], capture_output=True, text=True, check=True)
    n_helps, heavy = out.stdout.split()
    assert int(n_helps) >= 8  # the app and its commands: score, pairs, pretrain, finetune, evaluate, hub, models
    assert heavy == "-", f"--help imported {heavy}"


SCORE_WITHOUT_HUB = """
import sys
from typer.testing import CliRunner
from jsqa_cli.cli import app

result = CliRunner().invoke(app, ["score", sys.argv[1], "--model", sys.argv[2], "-q", "-j", "0", "--device", "cpu"])
assert result.exit_code == 0, result.output
print("huggingface_hub" in sys.modules, "jsqa_cli.hub" in sys.modules)
"""


def test_scoring_with_a_local_model_imports_no_hub_code(tiny_model_dir, make_audio):
    """huggingface_hub is for Hub ids only: `jsqa score` with a folder (or a bundled name) never imports it."""
    wav = make_audio("a.wav", seconds=1.5)
    out = subprocess.run(
        [sys.executable, "-c", SCORE_WITHOUT_HUB, str(wav), str(tiny_model_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["False", "False"]
