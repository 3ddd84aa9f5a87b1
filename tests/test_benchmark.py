"""The benchmark script runs end to end on the CPU (its GPU numbers come from the GPU machine)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_tiny(out: Path, *args: str) -> subprocess.CompletedProcess:
    """The benchmark script with tiny models on synthetic images, writing its JSON to `out`."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_speed.py"), "--tiny", "--synthetic", *args,
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def run_series_module():
    """tools/run_series.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_series", ROOT / "tools" / "run_series.py")
    run_series = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_series)
    return run_series


def test_benchmark_tiny_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_tiny(out, "--recipes", "article,fast,distilled", "--article-epochs", "1", "--epochs", "2")
    assert "| recipe | params | epochs | test acc |" in proc.stdout and "extrapolated" in proc.stdout
    result = json.loads(out.read_text())
    names = [r["recipe"] for r in result["rows"]]
    assert names == ["article", "fast", "distilled"]  # the distilled row's teacher is trained, not listed
    for r in result["rows"]:
        assert r["images_per_s"] > 0 and 0 <= r["test_acc"] <= 1 and len(r["history"]) == r["epochs"]
    distilled = result["rows"][-1]
    assert distilled["teacher"] == "teacher" and distilled["teacher_seconds"] > 0
    assert distilled["train_seconds"] == distilled["teacher_seconds"] + distilled["student_seconds"]


def test_a_cosine_recipe_given_fewer_epochs_ran_its_whole_schedule(tmp_path):
    """--epochs N with a cosine schedule is a complete run of N epochs (issue 21: it printed "N of 420 ... extrapolated");
    the article's multistep schedule cut short is the start of its 150-epoch run, and is extrapolated."""
    out = tmp_path / "bench.json"
    proc = run_tiny(out, "--recipes", "article,fast", "--article-epochs", "1", "--epochs", "2")
    article, fast = json.loads(out.read_text())["rows"]
    assert article["extrapolated"] and article["recipe_epochs"] == 150 and "1 of 150" in proc.stdout
    assert not fast["extrapolated"] and fast["epochs"] == fast["recipe_epochs"] == 2 and "2 of " not in proc.stdout
    assert "compile caches: cold" in proc.stdout


def test_a_budgeted_run_is_not_reported_as_extrapolated(tmp_path):
    """With budget_minutes the run's own chosen length is its full length (run 8 printed '153 of 300')."""
    out = tmp_path / "bench.json"
    run_tiny(out, "--recipes", "fast", "--epochs", "50", "--set", "budget_minutes=0.02")
    row = json.loads(out.read_text())["rows"][0]
    assert row["epochs"] == row["recipe_epochs"] < 50 and not row["extrapolated"]


def test_the_release_rows_run_with_one_teacher(tmp_path):
    """The release benchmark's own rows (airbench aside: it needs a GPU): the teacher is trained once and is the
    teacher of both distilled rows, whose clocks start with its training; each distilled row runs with its budget."""
    run_series = run_series_module()
    ours = [r for r in run_series.RELEASE_BENCHMARK if not r.startswith("airbench")]
    assert ours == ["teacher", "distilled", "distilled_sprint"]
    out = tmp_path / "bench.json"
    run_tiny(out, "--recipes", ",".join(ours))
    rows = {r["recipe"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ours
    for name in ("distilled", "distilled_sprint"):
        assert rows[name]["teacher_seconds"] == rows["teacher"]["train_seconds"]
    budgets = {name: rows[name]["config"]["budget_minutes"] for name in ("distilled", "distilled_sprint")}
    assert budgets == {"distilled": 4.2, "distilled_sprint": 0.3}  # each with its own budget (the student's minutes)


def test_a_release_trains_before_it_reads_the_model():
    """04 reads the released weights: in a release it must run after 05 has made them, or it shows the last release's."""
    run_series = run_series_module()
    names = [Path(f"{n}.ipynb") for n in ("01_patching", "04_vision_transformer", "05_training", "07_evaluation")]
    assert [p.stem for p in run_series.release_order(names)] == ["05_training", "01_patching", "04_vision_transformer", "07_evaluation"]
