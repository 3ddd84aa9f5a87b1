"""The notebooks as files: twins agree with their notebooks, headers match the project address."""
import importlib.util
import json
import platform
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))
TWINS = sorted((NB_DIR / "py").glob("[0-9][0-9]_*.py"))
EXPECTED = ["01_patching", "02_attention", "03_transformer_block", "04_vision_transformer", "05_training", "06_going_fast", "07_evaluation", "08_lora", "09_distillation", "10_small_data"]



def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sync_headers = load_tool("sync_headers")
run_series = load_tool("run_series")


def cells(nb) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", ()))) for c in nb.cells]


def twin_disagreements(ipynb: Path, py: Path) -> list[str]:
    """Where the notebook's cells differ from its twin's, read through jupytext (no mtimes)."""
    a, b = cells(nbformat.read(ipynb, as_version=4)), cells(jupytext.read(py))
    problems = []
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            first = next((k for k, (l1, l2) in enumerate(zip(x[1].splitlines(), y[1].splitlines())) if l1 != l2), None)
            where = "" if first is None else f" line {first + 1}: {x[1].splitlines()[first]!r} vs {y[1].splitlines()[first]!r}"
            tags = "" if x[2] == y[2] else f" tags {list(x[2])} vs {list(y[2])}"
            problems.append(f"cell {i} ({x[0]} vs {y[0]}){where}{tags}")
    if len(a) != len(b):
        problems.append(f"{len(a)} cells in the notebook, {len(b)} in the twin")
    return problems


def test_every_notebook_in_the_series_exists_with_a_twin():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED
    assert [p.stem for p in TWINS] == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_and_twin_agree(name):
    problems = twin_disagreements(NB_DIR / f"{name}.ipynb", NB_DIR / "py" / f"{name}.py")
    assert not problems, f"{name}.ipynb and py/{name}.py disagree (run `make sync` after editing the twin):\n" + "\n".join(problems)


def test_the_twin_check_catches_an_edit(tmp_path):
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    py = tmp_path / "twin.py"
    jupytext.write(nb, py, fmt="py:percent")
    ipynb = tmp_path / "nb.ipynb"
    nbformat.write(nb, ipynb)
    assert twin_disagreements(ipynb, py) == []
    py.write_text(py.read_text().replace("import torch\n", "import torch  # edited\n", 1))
    assert twin_disagreements(ipynb, py)


def test_the_twin_check_catches_a_lost_tag(tmp_path):
    nb = nbformat.read(NB_DIR / "01_patching.ipynb", as_version=4)
    py, ipynb = tmp_path / "twin.py", tmp_path / "nb.ipynb"
    jupytext.write(nb, py, fmt="py:percent", config=jupytext.config.load_jupytext_configuration_file(str(ROOT / "jupytext.toml")))
    nbformat.write(nb, ipynb)
    assert twin_disagreements(ipynb, py) == []
    assert '# %% tags=["nbval-check-output"]' in py.read_text(), "jupytext.toml must keep cell tags in the twins"
    py.write_text(py.read_text().replace('# %% tags=["nbval-check-output"]', "# %%", 1))
    assert any("tags" in p for p in twin_disagreements(ipynb, py))


@pytest.mark.parametrize("name", EXPECTED)
def test_every_notebook_has_the_same_metadata(name):
    """Colab's GPU accelerator, the python3 kernel, the release's Python version in language_info (JupyterLab fills in
    a missing one on opening and marks the notebook modified), and no run timings in the cells."""
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    python = json.loads((ROOT / "release" / "manifest.json").read_text())["python"]
    assert nb.metadata == run_series.notebook_metadata(python), (
        f"{name}.ipynb's metadata differs from tools/run_series.py's NOTEBOOK_METADATA:\n{json.dumps(nb.metadata, indent=1)}")
    timed = [i for i, c in enumerate(nb.cells) if "execution" in c.metadata]
    assert not timed, f"{name}.ipynb: cells {timed} keep a run's timings in their metadata"


def test_run_series_writes_notebooks_without_volatile_metadata():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1", metadata={"execution": {"iopub.status.busy": "x"}, "tags": ["t"]})])
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)"},
                   "language_info": {**run_series.NOTEBOOK_METADATA["language_info"], "version": "3.12.3"}, "widgets": {}}
    out = run_series.without_volatile_metadata(nb)
    assert out.metadata == run_series.notebook_metadata(platform.python_version()), "this Python's version, nothing else"
    assert out.metadata["language_info"]["version"] == platform.python_version() and "widgets" not in out.metadata
    assert out.cells[0].metadata == {"tags": ["t"]}, "tags stay (nbval reads them), timings go"
    assert "without_volatile_metadata(nb)" in (ROOT / "tools" / "run_series.py").read_text(), "run_series must write through it"


@pytest.mark.parametrize("name", EXPECTED)
def test_checked_outputs_are_tagged_not_marked_in_the_code(name):
    """nbval compares a cell's output when the cell has the tag nbval-check-output; a marker comment would show in
    the learner's code."""
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    marked = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "NBVAL_CHECK_OUTPUT" in c.source]
    assert not marked, f"{name}.ipynb: cells {marked} carry '# NBVAL_CHECK_OUTPUT'; tag them nbval-check-output instead"


@pytest.mark.parametrize("name", EXPECTED)
def test_headers_match_the_project_address(name):
    text = (NB_DIR / "py" / f"{name}.py").read_text()
    assert sync_headers.render(text, f"{name}.ipynb") == text, "run `python tools/sync_headers.py` then `make sync`"
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    assert nb.cells[0].cell_type == "markdown" and sync_headers.project.colab_url(f"{name}.ipynb") in nb.cells[0].source
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert first_code.source.startswith(sync_headers.INSTALL_MARK)
    assert "--no-deps" in first_code.source and sync_headers.project.PIP_URL in first_code.source


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_prints_its_mode_and_has_objectives_and_exercises(name):
    text = (NB_DIR / "py" / f"{name}.py").read_text()
    assert "runtime.print_mode()" in text
    assert "**You will learn**" in text and "## Exercises" in text


@pytest.mark.parametrize("name", EXPECTED)
def test_no_notebook_tours_package_source(name):
    """A notebook builds its piece where the learner sees it; printing the package's source is not teaching."""
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    touring = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "getsource" in c.source]
    assert not touring, f"{name}.ipynb: cells {touring} call inspect.getsource; build the piece in the notebook instead"


def test_readme_lists_every_notebook_with_its_badge():
    readme = (ROOT / "README.md").read_text()
    for name in EXPECTED:
        assert sync_headers.project.colab_url(f"{name}.ipynb") in readme, name


def test_environment_yml_lists_what_pyproject_requires():
    import tomllib

    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"][0] == "conda-forge" and "defaults" not in env["channels"]
    conda_names = {str(d).split(">")[0].split("=")[0].split("<")[0].strip() for d in env["dependencies"] if isinstance(d, str)}
    rename = {"torch": "pytorch"}
    wanted = py["dependencies"] + py["optional-dependencies"]["dev"]
    for req in wanted:
        name = req.split(">")[0].split("=")[0].split("<")[0].strip()
        assert rename.get(name, name) in conda_names, f"environment.yml lacks {name}"
    pip_part = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    assert any(line.strip().startswith("-e .") for line in pip_part), "the project must be installed in editable mode"


def test_pyproject_bounds_torch_only_from_below():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for d in deps:
        if d.startswith(("torch", "torchvision")):
            assert ">=" in d and "<" not in d.replace(">=", "") and "==" not in d, d


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci


def test_run_series_kernels_start_quietly_over_ipc(capfd):
    """make run starts one kernel per notebook: over IPC, not TCP, so ipykernel's unencrypted-TCP warning never prints,
    and each kernel is shut down by us (no 'Parent appears to have exited' at the end)."""
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1 + 1)")])
    km = run_series.ipc_kernel_manager()
    assert km.transport == "ipc"
    try:
        NotebookClient(nb, km=km, timeout=120).execute()
    finally:
        km.shutdown_kernel(now=False)
    assert nb.cells[0].outputs[0]["text"] == "2\n"
    err = capfd.readouterr().err
    assert "WARNING" not in err and "without encryption" not in err, err
