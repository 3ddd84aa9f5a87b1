"""The package's layout: imports run one way (no circle between vit_helpers' modules, counting imports under
TYPE_CHECKING and inside functions), and `train()` stays one screen."""
import ast
import os
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, read with `ast` from every file: imports at the top, under `if
    TYPE_CHECKING:` and inside functions all count. (The parent package that Python runs first for any submodule is not
    counted: a package's __init__ importing its own modules is its layout, not a circle.)"""
    files = {module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]  # the package relative imports start from
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in files and t != name)
        graph[name] = edges
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = "open"
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_circle_finder_sees_type_checking_and_lazy_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from .b import g\n\ndef f():\n    return g()\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import C\n\ndef g(): ...\n")
    (pkg / "c.py").write_text("def h():\n    from pkg import a\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "__main__.py").write_text("from ..c import h\n")
    graph = import_graph(pkg)
    assert graph["pkg.sub.__main__"] == {"pkg.c"} and graph["pkg"] == {"pkg.a"}
    assert find_circle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    (pkg / "c.py").write_text("def h(): ...\n")
    assert find_circle(import_graph(pkg)) is None


def test_imports_run_one_way():
    graph = import_graph(ROOT / "vit_helpers")
    assert {"vit_helpers.train", "vit_helpers.train.__main__", "vit_helpers.step"} <= graph.keys()
    assert "vit_helpers.step" in graph["vit_helpers.graphed"]  # the reading of the imports works
    circle = find_circle(graph)
    assert circle is None, "import circle in vit_helpers: " + " -> ".join(circle)


def test_train_is_one_screen():
    """`train()` is the loop a learner reads top to bottom: at most 60 lines, its signature and docstring included."""
    from vit_helpers.train import train

    n = len(inspect.getsource(train).splitlines())
    assert n <= 60, f"train() has {n} lines; move bookkeeping into helpers beside it"


@pytest.mark.parametrize("name", ["make_step", "make_batches", "TrainStep", "Pace", "recipe", "TrainResult", "load_or_train"])
def test_the_names_the_notebooks_import_from_train_stay(name):
    import vit_helpers.train as T

    assert hasattr(T, name)


def test_gpu_runs_print_each_failure_when_it_happens(tmp_path):
    """tools/gpu_tests.py's plugin prints a failure's reason before the run goes on, so a part cut short keeps it."""
    import subprocess
    import sys

    (tmp_path / "test_two.py").write_text("def test_bad():\n    assert 1 == 2, 'boom'\n\ndef test_later():\n    print('LATER')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tools")}
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "pytest_failures_at_once", "-p", "no:cacheprovider", "-s",
                          "-q", str(tmp_path / "test_two.py")], cwd=tmp_path, env=env, capture_output=True, text=True).stdout
    at_once = out.find("==== FAILED at once: test_two.py::test_bad (call) ====")
    assert 0 <= at_once < out.find("LATER") < out.find("= FAILURES ="), out
    assert "AssertionError: boom" in out[at_once:out.find("LATER")]


def test_every_config_field_has_its_comment():
    """05's recipe table prints each changed field's comment (config.field_comments): a field added without one would
    print an empty meaning."""
    from vit_helpers.config import CNNArgs, ModelArgs, TrainConfig, field_comments

    for cls in (ModelArgs, CNNArgs, TrainConfig):
        comments = field_comments(cls)
        assert list(comments) == list(cls.__dataclass_fields__)
        assert all(comments.values()), (cls.__name__, [k for k, v in comments.items() if not v])
    assert field_comments(ModelArgs)["dim"] == "width of every token embedding"
    with pytest.raises(TypeError, match="dataclass"):
        field_comments(dict)
