"""The command line: trains a recipe end to end, resumes exactly, and refuses bad options in one line each."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import synthetic_data
from vit_helpers.cli import PROG, main, parse_value

ROOT = Path(__file__).resolve().parents[1]


def write_image_folder(root: Path, n_train: int = 240, n_test: int = 40) -> Path:
    """A folder-per-class copy of synthetic_data (5 classes of 16x16 PNGs), as --data reads it."""
    from PIL import Image

    d = synthetic_data(n_train=n_train, n_test=n_test, classes=5, size=16)
    for split, xs, ys in (("train", d.train_x, d.train_y), ("test", d.test_x, d.test_y)):
        for i, (x, y) in enumerate(zip(xs, ys)):
            f = root / split / f"c{int(y)}" / f"{i:04d}.png"
            f.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x.permute(1, 2, 0).numpy()).save(f)  # (C,H,W)->(H,W,C)
    return root


def tiny_args(data: Path, recipe: str = "quick", epochs: int = 3) -> list[str]:
    """The quick recipe shrunk to a tiny model on the tiny folder: a CLI run takes about a second."""
    return ["--recipe", recipe, "--data", str(data), "--epochs", str(epochs),
            "--model-set", "image_size=16", "--model-set", "dim=32", "--model-set", "hidden_dim=64",
            "--model-set", "n_heads=2", "--model-set", "n_layers=2", "--set", "train_subset=None",
            "--set", "val_size=40", "--set", "batch_size=32", "--set", "eval_batch_size=40"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images"))


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def test_trains_a_recipe_end_to_end_and_resumes_exactly(folder, tmp_path, capsys):
    assert main(tiny_args(folder) + ["--checkpoint-dir", str(tmp_path / "straight"), "--out", str(tmp_path / "a.json")]) == 0
    shown = capsys.readouterr().out
    assert "train loss" in shown and "3/3" in shown  # the compact table
    assert "test accuracy" in shown and str(tmp_path / "straight" / "best.pt") in shown
    out = json.loads((tmp_path / "a.json").read_text())
    assert [h["epoch"] for h in out["history"]] == [1, 2, 3] and 0.2 < out["test_acc"] <= 1  # 5 classes
    assert out["world_size"] == 1 and out["model_args"]["n_classes"] == 5 and out["train_config"]["batch_size"] == 32

    split = tiny_args(folder) + ["--checkpoint-dir", str(tmp_path / "split")]
    assert main(split + ["--stop-after", "1"]) == 0
    assert "--resume" in capsys.readouterr().out
    assert torch.load(tmp_path / "split" / "last.pt", weights_only=True)["epoch"] == 1
    assert main(split + ["--resume"]) == 0
    a, b = weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "split" / "last.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_distilled_recipe_trains_its_teacher_first(folder, tmp_path, capsys):
    assert main(tiny_args(folder, "distilled_quick", epochs=1) + ["--checkpoint-dir", str(tmp_path), "--out", str(tmp_path / "d.json")]) == 0
    out = json.loads((tmp_path / "d.json").read_text())
    assert out["teacher"]["recipe"] == "teacher_quick" and (tmp_path / "teacher" / "last.pt").is_file()
    teacher_cfg = torch.load(tmp_path / "teacher" / "last.pt", weights_only=True)["train_config"]
    assert teacher_cfg["val_size"] == 40 and teacher_cfg["train_subset"] is None  # the student's split: no leak
    assert "teacher test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("argv, says", [
    (["--recipe", "turbo"], "invalid choice: 'turbo'"),
    (["--recipe", "quick", "--set", "lrr=1"], "has no field 'lrr'; did you mean 'lr'?"),
    (["--recipe", "quick", "--set", "lr=abc"], "lr takes a number, not 'abc'"),
    (["--recipe", "quick", "--set", "lr"], "expected FIELD=VALUE"),
    (["--recipe", "quick", "--set", "milestones=a,b"], "milestones takes comma-separated integers"),
    (["--recipe", "quick", "--set", "compile=maybe"], "compile takes true or false"),
    (["--recipe", "quick", "--set", "lr=-1"], "lr must be positive"),
    (["--recipe", "quick", "--model-set", "dim=100"], "dim=100 is not divisible by n_heads=3"),
    (["--recipe", "quick", "--model-set", "width=3"], "ModelArgs has no field 'width'"),
    (["--recipe", "quick", "--epochs", "x"], "invalid int value: 'x'"),
    (["--recipe", "quick", "--epochs", "4", "--set", "epochs=5"], "both given"),
    (["--recipe", "quick", "--teacher-checkpoint", "t.pt"], "is for distilled recipes"),
    (["--recipe", "quick", "--stop-after", "3", "--set", "checkpoint_every=2"], "multiple of checkpoint_every=2"),
    ([], "required: --recipe"),
])
def test_bad_options_are_refused_in_one_line(argv, says, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith(f"{PROG}: error: ") and says in err[0], err


def test_two_config_problems_give_two_lines(capsys):
    with pytest.raises(SystemExit):
        main(["--recipe", "quick", "--set", "lr=-1", "--set", "mix_prob=2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "mix_prob" in err[0] + err[1] and "lr must be positive" in err[0] + err[1]


def test_a_folder_that_holds_a_run_needs_resume(folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(tiny_args(folder) + ["--checkpoint-dir", str(tmp_path), "--resume"])
    assert e.value.code == 2 and "holds no last.pt" in capsys.readouterr().err
    torch.save({}, tmp_path / "last.pt")
    with pytest.raises(SystemExit) as e:
        main(tiny_args(folder) + ["--checkpoint-dir", str(tmp_path)])
    assert e.value.code == 2 and "already holds a run" in capsys.readouterr().err


def test_values_are_parsed_by_the_fields_type():
    assert parse_value("none", float | None) is None and parse_value("0.5", float | None) == 0.5
    assert parse_value("80,130", tuple[int, ...]) == (80, 130) and parse_value("", tuple[int, ...]) == ()
    assert parse_value("(0.9, 0.95)", tuple[float, float]) == (0.9, 0.95)
    assert parse_value("False", bool) is False and parse_value("1e-3", float) == 0.001
    for text, tp in (("0.9", tuple[float, float]), ("1.5", int), ("nan", float), ("", str)):
        with pytest.raises(ValueError):
            parse_value(text, tp)


def test_python_m_runs_the_command_line_cleanly():
    """`python -m vit_helpers.train` runs train.py as __main__: no runpy warning, no traceback for a bad option."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([sys.executable, "-m", "vit_helpers.train", "--help"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert ok.returncode == 0 and "--teacher-checkpoint" in ok.stdout and ok.stderr == "", ok.stderr
    bad = subprocess.run([sys.executable, "-m", "vit_helpers.train", "--recipe", "fast", "--set", "lr=x"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr, bad.stderr
