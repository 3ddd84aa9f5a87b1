"""The progress display: an HTML display updated in place in Jupyter (no widget), tqdm in a terminal, and only
the epoch table in headless runs."""
import json
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
import tqdm

from conftest import synthetic_data
from vit_helpers import VisionTransformer, progress
from vit_helpers.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
CFG = TrainConfig(epochs=2, batch_size=32, optimizer="adamw", lr=3e-3, schedule="cosine", warmup_epochs=1,
                  pipeline="gpu", augment="none", val_size=64, eval_batch_size=64, train_subset=256)
WIDGET = "application/vnd.jupyter.widget-view+json"


class FakeHandle:
    """Records what IPython's display(..., display_id=True) and handle.update(...) would send to the browser."""

    def __init__(self):
        self.bundles = []

    def display(self, bundle, raw=False, display_id=False):
        assert raw and display_id is True
        self.bundles.append(bundle)
        return self

    def update(self, bundle, raw=False):
        assert raw
        self.bundles.append(bundle)


def test_html_progress_updates_one_display_throttled_and_ends_with_the_table():
    fake = FakeHandle()
    bar = progress.HTMLProgress(total=1000, desc="training", interval=60.0, display=fake.display)
    for _ in range(1000):
        bar.update(1)  # within the interval: no redraw per step
    assert len(fake.bundles) == 1, "steps within the interval must not redraw"
    bar.write("a table line <b>")
    bar.close()
    final = fake.bundles[-1]
    assert set(final) == {"text/html", "text/plain"}
    assert "a table line &lt;b&gt;" in final["text/html"], "table lines are escaped into the HTML"
    assert final["text/plain"].splitlines()[0] == "a table line <b>"
    assert "done" in final["text/plain"] and "1000/1000 steps" in final["text/plain"]
    assert "<progress value='1000' max='1000'" in final["text/html"]


def test_html_progress_says_stopped_when_closed_early():
    fake = FakeHandle()
    bar = progress.HTMLProgress(total=10, interval=0.0, display=fake.display)
    bar.update(3)
    bar.close()
    assert "stopped" in fake.bundles[-1]["text/plain"] and "3/10 steps" in fake.bundles[-1]["text/plain"]


def test_with_a_budget_the_bar_counts_the_first_epoch_until_the_length_is_fixed():
    from vit_helpers.train import TrainResult

    budget = CFG.replace(epochs=100, budget_minutes=1.0)
    log = progress.EpochLog(budget, 8, TrainResult(epochs=100), bar=False)
    assert log.bar.total == 8, "before the budget fixes the length, 100 epochs would be a false estimate"
    log.result.epochs = 3  # what Pace.fit_budget chose
    log.epoch({"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.5, "lr": 1e-3, "images_per_s": 10.0})
    assert log.bar.total == 24


def test_outside_a_kernel_is_not_jupyter():
    assert not progress.in_jupyter()


def test_terminal_path_uses_tqdm(tiny_args, monkeypatch, capsys):
    monkeypatch.setattr(progress, "in_jupyter", lambda: False)
    assert isinstance(progress.progress_bar(10, show=True), tqdm.tqdm)
    train(VisionTransformer(tiny_args), synthetic_data(), CFG, progress=True)
    out, err = capsys.readouterr()
    assert progress.HEADER in out and "2/2" in out, "the table goes to stdout, above the bar"
    assert "training:" in err and "step" in err, "tqdm draws its bar on stderr"


def test_headless_prints_only_the_table(tiny_args, capsys):
    train(VisionTransformer(tiny_args), synthetic_data(), CFG, progress=False)
    out, err = capsys.readouterr()
    lines = out.rstrip("\n").splitlines()
    assert lines[0] == progress.HEADER and [ln.split()[0] for ln in lines[1:]] == ["1/2", "2/2"]
    assert err == ""


def test_in_a_jupyter_kernel_the_output_is_html_with_a_text_fallback_and_no_widget(tmp_path):
    """A real kernel runs train() with the progress display on: the cell's saved output is one display_data with
    text/html and text/plain (the finished table), updated in place, and no widget anywhere."""
    from nbclient import NotebookClient

    code = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(ROOT / 'tests')!r}, {str(ROOT)!r}]  # tests/ first: its conftest, not the root's
        from conftest import TINY, synthetic_data
        from vit_helpers import VisionTransformer
        from vit_helpers.train import train
        from test_progress import CFG
        result = train(VisionTransformer(TINY), synthetic_data(), CFG, progress=True)
    """)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[0].outputs
    assert not any(WIDGET in o.get("data", {}) for o in outputs), json.dumps(outputs)[:2000]
    displays = [o for o in outputs if o.output_type == "display_data"]
    assert len(displays) == 1, f"one display, updated in place; got {[o.output_type for o in outputs]}"
    data = displays[0].data
    assert "text/html" in data and "text/plain" in data
    plain = data["text/plain"]
    assert progress.HEADER in plain and "2/2" in plain and "done" in plain, plain
    assert "<progress" in data["text/html"] and "done" in data["text/html"]
    assert not [o for o in outputs if o.output_type == "stream" and o.name == "stderr"], "no stderr (no tqdm, no warning)"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
