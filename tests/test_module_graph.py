"""The package's import graph: no cycle anywhere, and the NumPy path never imports torch.

The graph is read statically from the source of every module under ``minilm/``: an edge
A -> B for every ``import minilm.B`` / ``from minilm.B import x`` in A, at the top or inside a
function alike (an import moved into a function to dodge a cycle is still a cycle). ``from
minilm.pkg import name`` is an edge to ``minilm.pkg.name`` when that is a module, else to
``minilm.pkg``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "minilm"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from . import x, from ..y import z
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    mod = f"{base}.{node.module}" if node.module else base
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod
                           for a in node.names]
            for t in targets:
                while t and t not in modules and "." in t:  # import minilm.x.y as z: module x.y
                    t = t.rpartition(".")[0]
                if t in modules and t != name and t.split(".")[0] == "minilm":
                    graph[name].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    colour = {m: 0 for m in graph}  # 0 unseen, 1 on the stack, 2 done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        colour[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if colour[n] == 1:
                return stack[stack.index(n):] + [n]
            if colour[n] == 0 and (c := visit(n)):
                return c
        stack.pop()
        colour[m] = 2
        return None

    for m in sorted(graph):
        if colour[m] == 0 and (c := visit(m)):
            return c
    return None


def test_the_module_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 30 and graph["minilm.torch.train"] >= {"minilm.training", "minilm.checkpoint"}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    # and this graph would hold one, were checkpoint.py to import the loop again
    graph = import_graph()
    graph["minilm.checkpoint"].add("minilm.numpy.train")
    assert find_cycle(graph) is not None


def test_the_training_layers_import_downwards_only():
    """checkpoint: file I/O, no loop, no model; training: no framework, no model; the twins'
    loops import the shared module, never each other."""
    graph = import_graph()
    assert graph["minilm.checkpoint"] <= set(), graph["minilm.checkpoint"]
    assert not {m for m in graph["minilm.training"]
                if m.startswith(("minilm.numpy", "minilm.torch", "minilm.runs"))}
    assert "minilm.numpy.train" not in graph["minilm.torch.train"]
    assert "minilm.torch.train" not in graph["minilm.numpy.train"]
    assert "minilm.training" in graph["minilm.numpy.train"]


def test_the_numpy_path_imports_no_torch():
    """In a fresh interpreter: the NumPy loop, its shared machinery, the checkpoint and data
    code and building a NumPy model from a run folder import neither torch nor triton."""
    code = ("import sys\n"
            "import minilm.numpy, minilm.numpy.train, minilm.data, minilm.checkpoint\n"
            "import minilm.training, minilm.runs, minilm.presets\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'triton'}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert out.strip() == "[]", out


@pytest.mark.slow
def test_a_numpy_run_needs_no_torch(tmp_path):
    """torch made unimportable: a NumPy run trains, checkpoints, resumes and loads back."""
    code = ("import sys\n"
            "sys.modules['torch'] = None\n"
            "from minilm.numpy.train import train\n"
            "from minilm.presets import get_preset\n"
            "from minilm.runs import load_run\n"
            "a = get_preset('tiny', steps=4, eval_interval=2, sample_tokens=5)\n"
            "q = dict(progress=False, print_fn=lambda s: None)\n"
            "train(a, sys.argv[1], **q)\n"
            "r = train(a.replace(steps=6), sys.argv[1], resume=True, **q)\n"
            "m, tok, ck = load_run(sys.argv[1])\n"
            "print(r.step, ck.step, type(m).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["6", "6", "TransformerLM"]
