"""The release is one thing: stored outputs, release/ records, released weights and the README agree.

`python tools/run_series.py --release` (on a GPU) writes them together; these checks run in CI.
"""
import json
import os
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
RELEASE = ROOT / "release"
ABSOLUTE_PATH = re.compile(r"(?<![:\w/.])/(?:[A-Za-z0-9_.-]+/)+[A-Za-z0-9_.-]*")  # as the before-stop check reads them
LOG_ROW = re.compile(r"^\s*\d+/\d+\s+[\d.]+\s+[\d.]+\s")  # a row of train()'s epoch table
MODE_LINE = re.compile(r"Mode: (\w+) \(([^)]*)\); device: ([^;\n]+)")


def manifest() -> dict:
    return json.loads((RELEASE / "manifest.json").read_text())


def output_texts(nb_path: Path) -> list[tuple[str, str]]:
    """(output type or stream name, text) of every stored output."""
    nb = nbformat.read(nb_path, as_version=4)
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            text = o.get("text", "") + "".join(o.get("data", {}).get("text/plain", ""))
            out.append((o.get("name", o.get("output_type")), text))
    return out


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_are_clean(nb_path):
    """No machine paths, warnings, tracebacks, stderr boxes, widgets or long training logs in what a reader sees."""
    outputs = output_texts(nb_path)
    problems = [f"stderr output: {t[:80]!r}" for kind, t in outputs if kind == "stderr"]
    for kind, text in outputs:
        if m := ABSOLUTE_PATH.search(text):
            problems.append(f"absolute path {m.group(0)!r}")
        problems += [f"{word} in {text[:80]!r}" for word in ("Warning", "Traceback", "Error displaying widget") if word in text]
        if (rows := sum(bool(LOG_ROW.match(line)) for line in text.splitlines())) > 30:
            problems.append(f"{rows} training-log rows in one output (at most 30)")
    nb = nbformat.read(nb_path, as_version=4)
    problems += ["a progress-bar widget" for c in nb.cells for o in c.get("outputs", [])
                 if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert not problems, f"{nb_path.name}:\n  " + "\n  ".join(problems)


def test_every_notebook_comes_from_the_same_release_on_one_gpu():
    m = manifest()
    assert sorted(m["notebooks"]) == [p.stem for p in NOTEBOOKS], "release/manifest.json must list every notebook"
    for nb_path in NOTEBOOKS:
        modes = [MODE_LINE.search(t) for _, t in output_texts(nb_path)]
        modes = [x for x in modes if x]
        assert modes, f"{nb_path.name} has no stored mode line (runtime.print_mode())"
        mode, _, device = modes[0].groups()
        assert (mode, device.strip()) == ("full", m["gpu"]), f"{nb_path.name} ran in {mode} mode on {device}, the release on {m['gpu']}"


def test_released_weights_are_the_release_model():
    from vit_helpers import paths
    from vit_helpers.checkpoint import load

    m = manifest()
    state = load(paths.RELEASED_WEIGHTS)
    assert state["best_val_acc"] == m["released_weights"]["best_val_acc"]
    assert m["gpu"] in state["made_by"]


def test_readme_quotes_the_release():
    readme = (ROOT / "README.md").read_text()
    m = manifest()
    assert m["gpu"] in readme and m["date"] in readme, "the README must name the release's GPU and date"
    evaluation = json.loads((RELEASE / "results_fast.json").read_text())
    assert f"{evaluation['test_accuracy']:.2%}" in readme, "the README must quote the released model's test accuracy"
    stored = "".join(t for _, t in output_texts(ROOT / "notebooks" / "07_evaluation.ipynb"))
    assert f"{evaluation['test_accuracy']:.2%}" in stored, "07's stored output must show the accuracy the release recorded"
    lora = "".join(t for _, t in output_texts(ROOT / "notebooks" / "08_lora.ipynb"))
    table = lora[lora.index("method "):].splitlines()[1:8]  # 08's summary: one line per method
    for line in table:
        method, acc = re.split(r"\s{2,}", line.strip())[:2]
        assert f"| {method} | {acc} |" in readme, f"the README's LoRA table must quote 08's stored {method}: {acc}"


def test_readme_quotes_the_release_benchmark():
    """The README's benchmark tables (the recipes over their seeds, each seed, the targets met or not) are
    release/benchmark.json's, the merge of one invocation per seed of the release's seeds on the release's GPU
    (release/benchmark/seed<N>.json), none older than the model 05 trained."""
    import importlib.util

    m = manifest()
    assert "benchmark" in m, "the release has no benchmark part (python tools/run_series.py --release --only benchmark)"
    record = m["benchmark"]
    run_series_spec = importlib.util.spec_from_file_location("run_series", ROOT / "tools" / "run_series.py")
    run_series = importlib.util.module_from_spec(run_series_spec)
    run_series_spec.loader.exec_module(run_series)
    wanted = run_series.BENCHMARK_SEEDS
    assert sorted(map(int, record.get("seeds", {}))) == sorted(wanted), \
        f"the release benchmark runs every recipe with seeds {list(wanted)}, the manifest lists " \
        f"{sorted(record.get('seeds', {}))} (run_series.py --release --only benchmark --seeds N)"
    spec = importlib.util.spec_from_file_location("train_speed", ROOT / "benchmarks" / "train_speed.py")
    train_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_speed)
    parts = []
    for seed, part in record["seeds"].items():
        result = json.loads((ROOT / part["file"]).read_text())
        assert train_speed.file_seed(result) == int(seed), f"{part['file']} ran with another seed than {seed}"
        assert f"hardware: {m['gpu']}" in result["environment"], f"seed {seed} ran on another GPU: {result['environment']}"
        assert [r["recipe"] for r in result["rows"]] == record["rows"], f"seed {seed} has other rows than the release's"
        parts.append(result)
    bench = json.loads((RELEASE / "benchmark.json").read_text())
    merged = train_speed.merge_seeds(parts)
    assert bench["seeds"] == sorted(map(int, record["seeds"])), "release/benchmark.json merges other seeds than the manifest lists"
    assert (bench["table"], bench["seed_table"]) == (merged["table"], merged["seed_table"]), \
        "release/benchmark.json is not the merge of the seeds' files: run_series.py merges them after each seed"
    readme = (ROOT / "README.md").read_text()
    assert bench["table"] in readme, "the README must hold release/benchmark.json's table unchanged"
    assert bench["seed_table"] in readme, "the README must hold release/benchmark.json's table of seeds unchanged"
    assert bench["targets_table"] in readme, "the README must hold release/benchmark.json's targets, met or not, unchanged"
    assert record["date"] == min(part["date"] for part in record["seeds"].values()) and record["date"] in readme
    trained = m["notebooks"]["05_training"]["date"]
    assert record["date"] >= trained, f"the benchmark ({record['date']}) is older than the model 05 trained ({trained})"


def test_readme_quotes_the_distillation_notebook():
    results = json.loads((RELEASE / "results_distilled.json").read_text())
    assert results["mode"] == "full" and results["student_recipe"] == "distilled"
    readme = (ROOT / "README.md").read_text()
    stored = "".join(t for _, t in output_texts(ROOT / "notebooks" / "09_distillation.ipynb"))
    for name, row in results["models"].items():
        acc = f"{row['test_accuracy']:.2%}"
        assert acc in stored, f"09's stored output must show {name}'s {acc} that its results file recorded"
        assert acc in readme, f"the README must quote 09's {name}: {acc}"


def test_the_going_fast_notebook_shows_the_release_speed_ladder():
    """06's stored ladder (its measured table in a release's full run) is release/speed_ladder.json, number for number."""
    path = RELEASE / "speed_ladder.json"
    if not path.is_file():
        pytest.skip("release/speed_ladder.json does not exist yet: the next GPU release writes it (notebook 06 in full mode)")
    from vit_helpers.speed import SpeedLadder

    ladder = SpeedLadder.load(path)
    assert ladder.gpu == manifest()["gpu"], f"the ladder was measured on {ladder.gpu}, the release on {manifest()['gpu']}"
    stored = "".join(t for _, t in output_texts(ROOT / "notebooks" / "06_going_fast.ipynb"))
    assert ladder.table() in stored, "06's stored output must show release/speed_ladder.json's table unchanged"
    for row in ladder.rows:
        assert f"{row['step']}: {row['images_per_s']:,.0f} images/s" in stored, f"06 must show the measured {row['step']!r}"


def test_readme_shows_the_release_speed_ladder():
    """The README's speed-ladder table is release/speed_ladder.json's, row for row (images/s rounded to integers)."""
    path = RELEASE / "speed_ladder.json"
    if not path.is_file():
        pytest.skip("release/speed_ladder.json does not exist yet: the next GPU release writes it (notebook 06 in full mode)")
    ladder = json.loads(path.read_text())
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("**The speed ladder**"):]
    table = section[section.index("| step | images/s |"):].split("\n\n")[0].splitlines()[2:]
    expected = [f"| {row['step']} | {round(row['images_per_s']):,} |" for row in ladder["rows"]]
    assert table == expected, "the README's speed ladder must show release/speed_ladder.json's rows:\n" + "\n".join(expected)


def test_readme_quotes_the_several_gpu_run():
    """The README's several-GPU numbers are release/ddp.json's, measured on the release's kind of GPU, with its date."""
    path = RELEASE / "ddp.json"
    assert path.is_file(), "release/ddp.json is missing: python benchmarks/ddp_speed.py on a machine with several GPUs writes it"
    ddp = json.loads(path.read_text())
    readme = (ROOT / "README.md").read_text()
    assert ddp["gpu"] == manifest()["gpu"], f"the several-GPU run was on {ddp['gpu']}, the release on {manifest()['gpu']}"
    assert ddp["date"] in readme, "the README must give the several-GPU run's date"
    for row in ddp["rows"]:
        assert f"| {row['gpus']} | {row['step']} | {row['images_per_s']:,.0f} |" in readme, f"the README must quote the {row} row"
    assert f"{ddp['scaling']:.2f}x" in readme
    d = ddp["distilled"]
    assert f"{d['test_acc']:.2%}" in readme and f"{d['seconds_total']:.1f} s" in readme
    stored = "".join(t for _, t in output_texts(ROOT / "notebooks" / "06_going_fast.ipynb"))
    assert f"{ddp['rows'][-1]['images_per_s']:,.0f}" in stored or f"{ddp['scaling']:.2f}" in stored, \
        "06's stored output must show the several-GPU run"


def grid_and_summary() -> tuple[dict, dict]:
    from vit_helpers import small_data as sd

    grid = json.loads((RELEASE / "small_data.json").read_text())
    return grid, sd.summarize(grid["runs"])


def test_the_small_data_grid_is_complete_and_from_the_release_gpu():
    """release/small_data.json holds every point of benchmarks/small_data.py's plan, once, run with the package's settings
    on the release's GPU (notebook 10 and the README quote it)."""
    from vit_helpers import small_data as sd

    grid, _ = grid_and_summary()
    assert grid["settings"] == {"quick": False, "vit_epochs": sd.VIT_EPOCHS, "sizes": list(sd.SIZES)}
    keys = [f"{r['model']}/{r['size']}/{r['seed']}" for r in grid["runs"]]
    assert sorted(keys) == sorted(p.key for p in sd.plan()), "the grid must hold each planned point exactly once"
    assert {r["gpu"] for r in grid["runs"]} == {manifest()["gpu"]}
    for r in grid["runs"]:
        assert r["images_seen"] == sd.point_configs(sd.Point(r["model"], r["size"], r["seed"]))[1].epochs * r["passes_per_epoch"] * r["size"]
    seen = {r["images_seen"] for r in grid["runs"] if r["model"] != "cnn"}
    assert len(seen) == 1, f"every ViT point must see the same number of images, got {seen}"


def test_notebook_10_and_the_readme_quote_the_grid():
    from vit_helpers import small_data as sd

    grid, summary = grid_and_summary()
    nb = nbformat.read(ROOT / "notebooks" / "10_small_data.ipynb", as_version=4)
    stored = "".join(t for _, t in output_texts(ROOT / "notebooks" / "10_small_data.ipynb"))
    prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    readme = (ROOT / "README.md").read_text()
    sizes = sorted(summary["cnn"])
    for model in sd.MODELS:
        row = " | ".join(f"{100 * summary[model][n][0]:.2f}%" for n in sizes)
        assert f"| {sd.LABELS[model]} | {row} |" in readme, f"the README's small-data table must quote the grid's {model} row"
        assert f"{100 * summary[model][sizes[0]][0]:6.2f}" in stored, f"10's stored table must show the grid's {model}"
    cnn, vit = summary["cnn"], summary["vit"]
    gap = lambda a, b, n: f"{100 * (a[n][0] - b[n][0]):.2f}"  # noqa: E731  (two decimals, as 10's table prints them)
    for n in (sizes[0], sizes[-1]):
        words = f"{gap(cnn, vit, n)} points at {n:,}"
        assert gap(cnn, vit, n) in prose and gap(cnn, vit, n) in readme, f"the gap at {n:,} images must be quoted: {words}"
        for m in ("distilled", "spt_lsa"):
            assert f"+{gap(summary[m], vit, n)}" in prose, f"10's prose must quote {m}'s gain at {n:,}"
    full = f"{100 * summary['distilled_spt_lsa'][sizes[-1]][0]:.2f}%"
    assert full in prose and full in readme and full in stored
    results = json.loads((RELEASE / "results_fast.json").read_text())
    assert f"{results['test_accuracy']:.2%}" in prose, "10's prose must quote the released ViT's full-length accuracy"
    assert "the live run agrees with the grid" in stored, "10's full-mode rerun of the smallest size must agree with the grid"


def test_the_gpu_test_run_is_recorded_without_failures():
    """`make test` on a GPU, in tools/gpu_tests.py's parts: the release records each part's counts, none failed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_tests", ROOT / "tools" / "gpu_tests.py")
    gpu_tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_tests)
    if os.environ.get("VIT_GPU_TESTS_PART"):  # inside `tools/gpu_tests.py units`: the record it checks is being made
        pytest.skip("this is the GPU run being recorded; the CPU suite checks its record")
    m = manifest()
    assert "gpu_tests" in m, "release/manifest.json has no GPU test run: python tools/gpu_tests.py PART on the release's GPU"
    record = m["gpu_tests"]
    assert record["gpu"] == m["gpu"]
    assert set(record["parts"]) == set(gpu_tests.PARTS), \
        f"the GPU run records {sorted(record['parts'])}, not every part of {sorted(gpu_tests.PARTS)}"
    for key in ("passed", "skipped", "failed"):
        assert record[key] == sum(p[key] for p in record["parts"].values())
    assert record["failed"] == 0 and all(p["failed"] == 0 for p in record["parts"].values()), f"failures on the GPU: {record}"
    assert all(p["passed"] > 0 for p in record["parts"].values())
    readme = (ROOT / "README.md").read_text()
    stated = f"{record['passed']} passed, {record['skipped']} skipped, {record['failed']} failed"
    assert stated in readme, f"the README must state the recorded GPU run: {stated}"
