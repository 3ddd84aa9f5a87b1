"""Training: the loop learns, checkpoints round-trip, resume is exact, NaN stops, configs are checked."""
import itertools
import math
import re
from types import SimpleNamespace

import pytest
import torch

from conftest import synthetic_data
from vit_helpers import VisionTransformer
from vit_helpers import checkpoint as C
from vit_helpers.train import NonFiniteLossError, TrainConfig, evaluate, lr_at, param_groups, predict, recipe, train

CFG = TrainConfig(epochs=3, batch_size=32, optimizer="adamw", lr=3e-3, weight_decay=0.05, schedule="cosine",
                  warmup_epochs=1, label_smoothing=0.1, grad_clip=1.0, pipeline="gpu", augment="crop_flip",
                  mix_prob=0.5, val_size=64, eval_batch_size=64)


def test_train_lowers_the_loss(tiny_args):
    data = synthetic_data()
    model = VisionTransformer(tiny_args)
    result = train(model, data, CFG.replace(mix_prob=0.0, epochs=4), progress=False)
    h = result.history
    assert len(h) == 4
    assert h[-1]["train_loss"] < h[0]["train_loss"] * 0.8
    assert h[-1]["val_acc"] > 0.6  # 5 classes: chance is 0.2


def test_lr_schedules():
    cos = TrainConfig(epochs=10, lr=1.0, schedule="cosine", warmup_epochs=2)
    assert lr_at(0, cos, 10) == pytest.approx(0.05)
    assert lr_at(19, cos, 10) == pytest.approx(1.0)
    assert lr_at(99, cos, 10) < 0.01
    assert all(lr_at(s + 1, cos, 10) <= lr_at(s, cos, 10) + 1e-12 for s in range(20, 99))
    art = recipe("article")[1]
    assert lr_at(79 * 10, art, 10) == pytest.approx(3e-4)
    assert lr_at(80 * 10, art, 10) == pytest.approx(3e-5)
    assert lr_at(130 * 10, art, 10) == pytest.approx(3e-6)


def test_no_weight_decay_on_norms_biases_embeddings(tiny_args):
    model = VisionTransformer(tiny_args)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no = {names[id(p)] for p in no_decay["params"]}
    assert {"cls_token", "pos_embedding", "norm.weight", "head.bias", "transformer.0.layer_norm_1.weight"} <= no
    assert all(names[id(p)].endswith("weight") and p.ndim == 2 for p in decay["params"])


def test_checkpoint_round_trip_and_config_check(tiny_args, tmp_path):
    data = synthetic_data()
    model = VisionTransformer(tiny_args)
    train(model, data, CFG.replace(epochs=1), checkpoint_dir=tmp_path, progress=False)
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "last.pt").is_file()
    loaded, ckpt = C.load_model(tmp_path / "best.pt")
    x = torch.randn(2, 3, 16, 16)
    model.cpu().eval()
    torch.testing.assert_close(loaded(x), model(x))
    assert ckpt["history"][0]["epoch"] == 1
    other = VisionTransformer(tiny_args.replace(dim=64, hidden_dim=64))
    with pytest.raises(ValueError, match="dim: checkpoint has 32, model has 64"):
        C.load_weights(other, tmp_path / "best.pt")
    # dropout is a training-time setting: the same weights load with another rate
    C.load_weights(VisionTransformer(tiny_args.replace(dropout=0.3)), tmp_path / "best.pt")


def test_atomic_save_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "c.pt"
    C.atomic_save({"a": torch.ones(2)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        C.atomic_save({"a": Boom()}, path)
    assert torch.equal(C.load(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_resume_equals_uninterrupted_run(tiny_args, tmp_path):
    data = synthetic_data()
    # The math attention kernel: on a GPU the fused kernels' backward may add in an order that varies with the GPU's
    # load (it failed so under 12 test workers on one H200 and passed alone), so two uninterrupted runs could differ too.
    cfg = CFG.replace(epochs=4, attention="math")
    torch.manual_seed(1)
    straight = VisionTransformer(tiny_args.replace(dropout=0.1))
    r1 = train(straight, data, cfg, checkpoint_dir=tmp_path / "a", progress=False)

    torch.manual_seed(1)
    first = VisionTransformer(tiny_args.replace(dropout=0.1))

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(first, data, cfg, checkpoint_dir=tmp_path / "b", progress=False, on_epoch_end=stop_after_two)
    torch.manual_seed(12345)  # a different global RNG state: resume must restore it
    resumed = VisionTransformer(tiny_args.replace(dropout=0.1))
    r2 = train(resumed, data, cfg, checkpoint_dir=tmp_path / "b", resume=True, progress=False)
    for (n, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), n
    assert [h["train_loss"] for h in r1.history] == [h["train_loss"] for h in r2.history]


def test_resume_refuses_another_config(tiny_args, tmp_path):
    data = synthetic_data()
    train(VisionTransformer(tiny_args), data, CFG.replace(epochs=1), checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="lr: checkpoint has 0.003, given 1.0"):
        train(VisionTransformer(tiny_args), data, CFG.replace(epochs=1, lr=1.0), checkpoint_dir=tmp_path, resume=True, progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_args, tmp_path):
    data = synthetic_data()
    model = VisionTransformer(tiny_args)

    def poison(record):
        if record["epoch"] == 1:
            model.head.register_forward_hook(lambda m, i, o: o * float("nan"))

    with pytest.raises(NonFiniteLossError, match="epoch 2.*last.pt \\(epoch 1\\) is kept and resumable"):
        train(model, data, CFG, checkpoint_dir=tmp_path, progress=False, on_epoch_end=poison)
    ckpt = C.load(tmp_path / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_evaluate_counts_correctly(tiny_args):
    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 3).float() * 10

    x = torch.zeros(4, 1, 1, 1)
    x[:, 0, 0, 0] = torch.tensor([0.0, 1.0, 2.0, 0.0])
    loss, acc = evaluate(Fixed(), [(x, torch.tensor([0, 1, 0, 0]))], "cpu")
    assert acc == 0.75 and math.isfinite(loss)


def test_recipes_exist_and_article_is_exact():
    args, cfg = recipe("article")
    assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.epochs, cfg.milestones, cfg.pipeline) == ("adam", 3e-4, 16, 150, (80, 130), "classic")
    assert args.dropout == 0.2
    for name in ("fast", "large", "quick"):
        recipe(name)
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe("turbo")


def test_released_weights_are_the_fast_recipe():
    """The shipped model was trained with the fast recipe as it stands (config and schedule length)."""
    from vit_helpers import paths
    from vit_helpers.checkpoint import load_model
    from vit_helpers.train import recipe

    model, ckpt = load_model(paths.RELEASED_WEIGHTS)
    args, cfg = recipe("fast")
    assert model.args == args
    assert C.train_config_differences(ckpt["train_config"], cfg) == []  # (fields added since count as their defaults)
    assert ckpt["epochs"] == cfg.epochs and len(ckpt["history"]) == ckpt["best_epoch"]  # a full-length run's best epoch
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10)


# ---- the config is checked when it is made ----

@pytest.mark.parametrize("changes, message", [
    ({"checkpoint_every": 0}, "checkpoint_every must be an integer >= 1"),
    ({"log_every": 0}, "log_every must be an integer >= 1"),
    ({"train_subset": -5}, "train_subset must be a positive integer"),
    ({"pipeline": "classic", "augment": "article", "mix_prob": 0.5}, "mix_prob=0.5 needs pipeline='gpu'"),
    ({"pipeline": "classic", "augment": "trivial"}, "pipeline 'classic' augments with one of"),
    ({"schedule": "multistep", "warmup_epochs": 1}, "warmup_epochs is used only by schedule='cosine'"),
    ({"compile_mode": "reduce-overhead"}, "needs compile=True"),
    ({"compile_scope": "blocks"}, "compile_scope='blocks' needs compile=True"),
    ({"compile": True, "compile_scope": "layers"}, "compile_scope='layers' is not one of"),
    ({"budget_minutes": 0}, "budget_minutes must be positive"),
    ({"optimizer": "lion"}, "optimizer='lion' is not one of"),
    ({"momentum": 0.8}, "momentum=0.8 is used only by optimizer='sgd'"),
    ({"optimizer": "sgd", "betas": (0.8, 0.99)}, "are used only by Adam"),
    ({"distill_weight": 0.3}, "distill_weight=0.3 is used only with distillation"),
    ({"distill_temperature": 2.0}, "distill_temperature=2.0 is used only with distillation"),
    ({"distill": "hard", "distill_temperature": 2.0}, "distill_temperature is used only by distill='soft'"),
    ({"distill": "soft", "distill_weight": 1.5}, "distill_weight must be in [0, 1]"),
    ({"distill": "soft", "distill_temperature": 0}, "distill_temperature must be positive"),
    ({"distill": "dark"}, "distill='dark' is not one of"),
    ({"repeats": 3}, "repeats=3 must divide batch_size=32"),
])
def test_config_refuses_bad_fields_and_ignored_options(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        CFG.replace(**changes)


def test_recipes_are_changes_to_a_base_recipe():
    _, fast = recipe("fast")
    _, large = recipe("large")
    _, quick = recipe("quick")
    assert large.replace(epochs=fast.epochs, lr=fast.lr) == fast  # large = fast + two changes
    assert quick.schedule == fast.schedule == "cosine" and quick.compile is False and quick.cuda_graph is False


def test_gpu_only_settings_on_the_cpu_warn_once_and_say_what_is_dropped(tiny_args):
    cfg = CFG.replace(epochs=1, compile=True, cuda_graph=True, precision="auto")
    with pytest.warns(UserWarning, match="compile, cuda_graph, precision='auto' need a CUDA GPU and are dropped") as seen:
        train(VisionTransformer(tiny_args), synthetic_data(), cfg, progress=False, device="cpu")
    assert len([w for w in seen if "dropped" in str(w.message)]) == 1


# ---- the step notebook 05 shows is the step train() runs ----

def test_train_runs_the_plain_step_on_the_cpu(tiny_args, monkeypatch):
    from vit_helpers import train as T

    calls = []
    original = T.TrainStep.update
    monkeypatch.setattr(T.TrainStep, "update", lambda self, x, y: (calls.append(len(x)), original(self, x, y)))
    T.train(VisionTransformer(tiny_args), synthetic_data(), CFG.replace(epochs=2), progress=False)
    steps_per_epoch = (512 - CFG.val_size) // CFG.batch_size
    assert calls == [CFG.batch_size] * (2 * steps_per_epoch)


def notebook_05(*names: str, **modules) -> dict:
    """The functions `names` as notebook 05 writes them, taken from its twin (each function alone, not the rest of its
    cell), defined in one namespace holding what the notebook imported earlier (`modules` replace those)."""
    import ast
    import jupytext
    from pathlib import Path

    nb = jupytext.read(Path(__file__).resolve().parents[1] / "notebooks" / "py" / "05_training.py")
    defs = {node.name: node for c in nb.cells if c.cell_type == "code" for node in ast.parse(c.source).body
            if isinstance(node, ast.FunctionDef)}
    namespace = {"torch": torch, "F": torch.nn.functional, "math": math, "time": __import__("time"), **modules}
    exec(compile(ast.Module([defs[n] for n in names], type_ignores=[]), "05_training.py", "exec"), namespace)
    return namespace


def notebook_05_step():
    """The training step notebook 05 writes."""
    return notebook_05("training_step")["training_step"]


def test_notebook_05_step_equals_the_step_train_runs(tiny_args):
    from vit_helpers.data import GPUBatches
    from vit_helpers.train import TrainStep, lr_at, make_optimizer

    data = synthetic_data()
    cfg = CFG.replace(mix_prob=1.0)  # soft MixUp/CutMix targets on every batch
    torch.manual_seed(3)
    a, b = VisionTransformer(tiny_args), VisionTransformer(tiny_args)
    b.load_state_dict(a.state_dict())
    step = TrainStep(a, cfg, torch.device("cpu"))
    opt = make_optimizer(b, cfg, torch.device("cpu"))
    batches = GPUBatches(data.train_x[:256], data.train_y[:256], 32, shuffle=True, drop_last=True, policy="crop_flip",
                         mix_prob=1.0, n_classes=5)
    mine = notebook_05_step()
    for i, (x, y) in enumerate(batches):
        lr = lr_at(i, cfg, len(batches))
        step((x, y), lr)
        mine(b, opt, x, y, lr, cfg)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n


def test_history_seconds_are_each_epochs_own_and_the_table_prints_their_sum(tiny_args, monkeypatch, capsys):
    """A record's `seconds` is that epoch's training time, not a running total; train_seconds and the table's time
    column are their sum (so far). Read on a clock that moves one second each time the run reads it."""
    from vit_helpers import train as T

    clock = itertools.count()
    monkeypatch.setattr(T.Pace, "_now", lambda self, device: float(next(clock)))
    result = train(VisionTransformer(tiny_args), synthetic_data(), CFG.replace(epochs=3), progress=False)
    seconds = [h["seconds"] for h in result.history]
    assert seconds == [3.0, 1.0, 1.0]  # start and stop; the first epoch also reads the clock twice to time its steps
    assert result.train_seconds == sum(seconds)
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if re.match(r"\s+\d+/3\s", line)]
    assert [row[-1] for row in rows] == [f"{t:.0f}s" for t in itertools.accumulate(seconds)]


@pytest.mark.parametrize("spe", [20, 2, 1])
def test_pace_counts_the_steps_between_its_readings(spe):
    """tick(i) reads the clock after step i, stop() after the epoch's last: on a clock where compiling takes 10 s and
    every step 1 s, the steady pace is 1 s per step (it read 17/18 s, one step too many in the divisor, for 20 steps);
    an epoch too short for two readings gives its whole time over its steps."""
    from vit_helpers.train import Pace, TrainConfig

    pace = Pace(spe, TrainConfig(epochs=5))
    times = iter([0.0] + [10.0 + i + 1 for i in range(spe)])  # start, then after each step i (compiling in the first)
    readings = {}
    pace._now = lambda device: next(times)
    pace.start(0, "cpu")
    for i in range(spe):
        now = next(times)
        pace._now = lambda device, now=now: now
        pace.tick(i, "cpu")
        readings[i] = now
    pace._now = lambda device: readings[spe - 1]
    pace.stop("cpu")
    expected = 1.0 if spe > pace.a + 1 else readings[spe - 1] / spe
    assert pace.step_seconds() == pytest.approx(expected)


def test_notebook_05_fit_records_seconds_as_train_does(tiny_args, capsys):
    """The loop notebook 05 writes keeps each epoch's own training time under `seconds`, as train()'s history does
    (issue 28: it kept a running total), and prints their running sum, as train()'s time column does."""
    from vit_helpers.data import GPUBatches

    clock = itertools.count()
    fake_time = SimpleNamespace(perf_counter=lambda: float(next(clock)))
    fit = notebook_05("lr_schedule", "training_step", "evaluate_model", "fit", time=fake_time)["fit"]
    data = synthetic_data()
    batches = GPUBatches(data.train_x[:128], data.train_y[:128], 32, shuffle=True, drop_last=True, policy="crop_flip")
    val = GPUBatches(data.test_x[:64], data.test_y[:64], 64)
    model = VisionTransformer(tiny_args)
    history = fit(model, torch.optim.AdamW(model.parameters(), lr=1e-3), batches, val, CFG, 3, 1)
    assert [h["seconds"] for h in history] == [1.0, 1.0, 1.0]  # one read at the start and one at the end of each epoch
    assert [line.split()[-2:] for line in capsys.readouterr().out.splitlines()] == [["1", "s"], ["2", "s"], ["3", "s"]]


# ---- checkpoints: one owner, resume refused on another run, load_or_train ----

def test_resume_on_other_data_is_refused_naming_what_differs(tiny_args, tmp_path):
    train(VisionTransformer(tiny_args), synthetic_data(), CFG.replace(epochs=1), checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(C.ResumeError, match=r"belongs to another run(.|\n)*training data: checkpoint has \w+ \(512 images\), given \w+ \(512 images\)"):
        train(VisionTransformer(tiny_args), synthetic_data(seed=1), CFG.replace(epochs=1), checkpoint_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(C.ResumeError, match="model dim: checkpoint has 32, given 64"):
        train(VisionTransformer(tiny_args.replace(dim=64, hidden_dim=64)), synthetic_data(), CFG.replace(epochs=1),
              checkpoint_dir=tmp_path, resume=True, progress=False)


def test_load_or_train_trains_then_loads_then_refuses_other_configs(tiny_args, tmp_path, capsys):
    from vit_helpers.train import load_or_train

    data = synthetic_data()
    cfg = CFG.replace(epochs=2)
    first = VisionTransformer(tiny_args)
    r1 = load_or_train(first, data, cfg, tmp_path, progress=False)
    second = VisionTransformer(tiny_args)
    r2 = load_or_train(second, data, cfg, tmp_path, progress=False)
    assert "loaded the finished run" in capsys.readouterr().out
    assert r2.history == r1.history and r2.epochs == 2
    for p, q in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(p.cpu(), q)
    with pytest.raises(C.ResumeError, match="lr: checkpoint has 0.003, given 0.001"):
        load_or_train(VisionTransformer(tiny_args), data, cfg.replace(lr=1e-3), tmp_path, progress=False)


def test_load_or_train_resumes_an_unfinished_run(tiny_args, tmp_path, capsys):
    from vit_helpers.train import load_or_train

    data = synthetic_data()
    cfg = CFG.replace(epochs=3)

    def stop_after_one(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(VisionTransformer(tiny_args), data, cfg, checkpoint_dir=tmp_path, progress=False, on_epoch_end=stop_after_one)
    result = load_or_train(VisionTransformer(tiny_args), data, cfg, tmp_path, progress=False)
    assert "resuming the unfinished run" in capsys.readouterr().out
    assert [h["epoch"] for h in result.history] == [1, 2, 3]


def test_a_nan_on_the_last_step_of_an_epoch_never_reaches_the_checkpoint(tiny_args, tmp_path):
    """The epoch's loss is still finite, but the weights are not: nothing may be written, last.pt stays resumable."""
    from vit_helpers import train as T

    data = synthetic_data()
    cfg = CFG.replace(epochs=3)
    model = VisionTransformer(tiny_args)
    steps_per_epoch = (512 - cfg.val_size) // cfg.batch_size
    count = {"n": 0}
    original = T.TrainStep.update

    def update(self, x, y):
        count["n"] += 1
        if count["n"] == 2 * steps_per_epoch:  # the last step of epoch 2: a NaN gradient
            model.head.weight.register_hook(lambda g: g * float("nan"))
        original(self, x, y)

    T.TrainStep.update = update
    try:
        with pytest.raises(NonFiniteLossError, match="epoch 2.*stopped before writing anything.*last.pt \\(epoch 1\\) is kept"):
            train(model, data, cfg, checkpoint_dir=tmp_path, progress=False)
    finally:
        T.TrainStep.update = original
    state = C.load(tmp_path / "last.pt")
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())
    resumed = train(VisionTransformer(tiny_args), data, cfg, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]


# ---- a time budget fixes the length ----

def test_budget_fixes_the_number_of_epochs_and_the_schedule_follows(tiny_args, capsys):
    cfg = CFG.replace(epochs=500, budget_minutes=0.05)  # 3 seconds: far fewer than 500 epochs on a CPU
    result = train(VisionTransformer(tiny_args), synthetic_data(), cfg, progress=False)
    out = capsys.readouterr().out
    assert re.search(r"budget 0.05 min: [\d,]+ images/s once compiled, the first epoch took \d+ s -> \d+ epochs", out)
    assert 1 <= result.epochs < 500 and len(result.history) == result.epochs
    if result.epochs > 1:
        assert result.history[-1]["lr"] < 0.05 * cfg.lr  # the cosine reached its end at the chosen length


def test_a_run_that_would_take_hours_warns_with_an_estimate(tiny_args, monkeypatch):
    from vit_helpers import train as T

    monkeypatch.setattr(T.Pace, "WARN_SECONDS", 1e-3)
    with pytest.warns(UserWarning, match=r"at the measured [\d,]+ images/s on the CPU, 2 epochs will take about [\d.]+ hours"):
        train(VisionTransformer(tiny_args), synthetic_data(), CFG.replace(epochs=2), progress=False, device="cpu")


def test_the_log_is_a_compact_table(tiny_args, capsys):
    train(VisionTransformer(tiny_args), synthetic_data(), CFG.replace(epochs=9, log_every=4), progress=True)
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[0].split() == ["epoch", "train", "loss", "train", "acc", "val", "loss", "val", "acc", "lr", "img/s", "time"]
    assert [l.split()[0] for l in lines[1:]] == ["1/9", "4/9", "8/9", "9/9"]


def test_predict_takes_uint8_or_float_images_in_0_1_and_refuses_other_ranges(tiny_args):
    model = VisionTransformer(tiny_args)
    x = synthetic_data(n_train=8, n_test=8).test_x  # uint8 (8, 3, 16, 16)
    want = predict(model, x)
    torch.testing.assert_close(predict(model, x.float() / 255), want)  # e.g. torchvision's ToTensor
    torch.testing.assert_close(predict(model, x.double() / 255), want, atol=1e-5, rtol=1e-5)  # float64 is converted
    with pytest.raises(ValueError, match=r"range over \[0, 25\d\]. Pass 0..255 values as uint8"):
        predict(model, x.float())  # 0..255 as floats: dividing again would give nonsense, so it is refused
    with pytest.raises(ValueError, match="already normalised, call model"):
        predict(model, torch.randn(4, 3, 16, 16))
    with pytest.raises(TypeError, match="got dtype torch.int64"):
        predict(model, x.long())


def test_regional_compilation_traces_one_block_for_all_layers_and_is_undone(tiny_args):
    """compile_scope="blocks": every transformer block (and the teacher) compiled in place, the layers sharing one traced
    graph (the point: a fraction of the compile time), the same outputs; leaving `compile_regions` leaves the modules as
    they were. Dynamo's "eager" backend traces without generating kernels, so this runs on a CPU in seconds."""
    from torch._dynamo.utils import counters

    from vit_helpers.cnn import ConvNet
    from vit_helpers.compiling import compile_regions
    from vit_helpers.config import CNN_PRESETS

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = VisionTransformer(tiny_args.replace(n_layers=3)).eval()
    teacher = ConvNet(CNN_PRESETS["teacher_small"]).eval()
    x = torch.randn(4, 3, tiny_args.image_size, tiny_args.image_size)
    with torch.no_grad():
        before, teacher_before = model(x), teacher(x)
    with compile_regions(model, teacher, backend="eager") as regions:
        assert regions == [*model.transformer, teacher] and all(m._compiled_call_impl is not None for m in regions)
        with torch.no_grad():
            torch.testing.assert_close(model(x), before)
            torch.testing.assert_close(teacher(x), teacher_before)
    # one graph for the three blocks (their weights are inputs, not constants), one for the teacher
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])
    assert all(m._compiled_call_impl is None for m in regions)
    with pytest.raises(ValueError, match="compile_scope='blocks' compiles a VisionTransformer's blocks"):
        with compile_regions(teacher, None, backend="eager"):
            pass
    torch._dynamo.reset()


def test_compiling_gives_back_what_the_caller_had_compiled_also_after_an_error(tiny_args):
    """A block the caller compiled before keeps its own compiled forward; the others come back plain. (nn.Module.compile
    only sets `_compiled_call_impl`; nothing here is called, so nothing is compiled: a CPU test.)"""
    from vit_helpers.compiling import compile_regions

    model = VisionTransformer(tiny_args.replace(n_layers=3))
    model.transformer[1].compile(backend="eager")
    mine = model.transformer[1]._compiled_call_impl
    with pytest.raises(RuntimeError, match="inside"):
        with compile_regions(model) as regions:
            assert all(m._compiled_call_impl is not None for m in regions)
            assert model.transformer[1]._compiled_call_impl is not mine  # the run's settings while it trains
            raise RuntimeError("an error inside")
    assert [b._compiled_call_impl for b in model.transformer] == [None, mine, None]


@pytest.mark.parametrize("scope", ["step", "blocks"])
@pytest.mark.parametrize("graphed", [False, True], ids=["plain", "graphed"])
def test_a_step_built_directly_leaves_the_model_as_it_came_and_compiled_owns_the_regions(tiny_args, monkeypatch, scope, graphed):
    """TrainStep (and GraphedStep, which records one) never compiles the caller's modules in place: in compile_scope
    "blocks", `compiling.compiled` does, for its `with` block, and gives them back. The GPU-only switch is turned on here
    so that this runs on a CPU: compiling is lazy, and no step is called."""
    from vit_helpers import compiling, step as S
    from vit_helpers.cnn import ConvNet
    from vit_helpers.config import CNN_PRESETS
    from vit_helpers.graphed import GraphedStep
    from vit_helpers.train import make_batches

    for module in (compiling, S):
        monkeypatch.setattr(module, "compiles", lambda cfg, device: cfg.compile)
    cfg = CFG.replace(compile=True, compile_scope=scope, distill="soft", ema_decay=0.99)
    model = VisionTransformer(tiny_args)
    teacher = ConvNet(CNN_PRESETS["teacher_small"].replace(n_classes=tiny_args.n_classes))
    model.transformer[0].compile(backend="eager")  # the caller's own
    mine = model.transformer[0]._compiled_call_impl
    device = torch.device("cpu")
    if graphed:  # (GraphedStep records its graph at the first call, which needs a GPU; building it does not)
        step = GraphedStep(model, cfg, device, make_batches(synthetic_data(), cfg, device, tiny_args.n_classes)[0],
                           teacher=teacher)
    else:
        step = S.TrainStep(model, cfg, device, teacher=teacher)
    modules = [*model.transformer, teacher, *step.ema.transformer]
    untouched = [mine] + [None] * (len(modules) - 1)  # (the average is a plain copy: it runs its own weights)
    assert [m._compiled_call_impl for m in modules] == untouched
    with compiling.compiled(step, cfg, device) as forward:
        if scope == "blocks":
            assert forward is step.ema and all(m._compiled_call_impl is not None for m in modules)
            assert model.transformer[0]._compiled_call_impl is not mine
        else:
            assert forward is not step.ema and forward._orig_mod is step.ema  # a compiled copy, nothing in place
            assert [m._compiled_call_impl for m in modules] == untouched
    assert [m._compiled_call_impl for m in modules] == untouched


def test_auto_precision_uses_bf16_only_where_the_gpu_computes_in_it(monkeypatch):
    """precision="auto": bf16 on a GPU with bf16 arithmetic (an H200), float16 with a GradScaler on one that only emulates
    it (a T4, where torch.cuda.is_bf16_supported() says yes by default), nothing on a CPU or with fp32."""
    from vit_helpers.step import autocast_settings

    gpu = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # Ampere or later
    assert autocast_settings("auto", gpu) == (torch.bfloat16, False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)  # a T4
    assert autocast_settings("auto", gpu) == (torch.float16, True)
    assert autocast_settings("fp32", gpu) == (None, False)
    assert autocast_settings("auto", torch.device("cpu")) == (None, False)
