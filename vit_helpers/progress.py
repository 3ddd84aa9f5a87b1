"""Training progress for the three places training runs: a live HTML display in Jupyter, a tqdm bar in a
terminal, and only the compact epoch table in headless runs (VIT_PROGRESS=0: CI, the stored notebooks).

Why not tqdm's Jupyter widget (`tqdm.auto`): a widget is a model living in the kernel, reached through comm
messages. In JupyterLab the first widget a kernel creates makes the status bar read Idle while the cell still
runs (a learner thinks training stalled), and a saved notebook keeps a view of a model that is gone, so on
reopening it shows "Error displaying widget: model not found". An HTML display updated through an IPython display
handle (`display(..., display_id=True)`, then `handle.update(...)`) is plain output: the status stays Busy, and
what the notebook saves is the last update, the finished table.
"""
from __future__ import annotations

import html
import sys
import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # only for the type hints
    from .config import TrainConfig

HEADER = (f"{'epoch':>9}  {'train loss':>10}  {'train acc':>9}  {'val loss':>8}  {'val acc':>7}  {'lr':>8}  "
          f"{'img/s':>8}  {'time':>6}")


def in_jupyter() -> bool:
    """True inside a Jupyter kernel (JupyterLab, Notebook, Colab, VS Code), False in a terminal or a script."""
    ipython = sys.modules.get("IPython")  # never imported here: a script without IPython is not in Jupyter
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return getattr(shell, "kernel", None) is not None


def clock(seconds: float) -> str:
    """0:42, 12:05 or 1:02:03."""
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


class HTMLProgress:
    """A progress bar and a table of lines, shown as one HTML output that updates in place.

    The same small interface as tqdm's (`update`, `total`, `set_postfix`, `write`, `close`), so EpochLog drives
    either. Redrawn at most every `interval` seconds while steps go by (a redraw is a message to the browser),
    and at once for a new table line and at the end. Each update carries text/html and a text/plain fallback
    (what a terminal, nbval or a plain-text viewer reads).
    """

    def __init__(self, total: int, initial: int = 0, desc: str = "training", unit: str = "step",
                 interval: float = 0.5, display=None):
        self.total, self.n, self.desc, self.unit, self.interval = total, initial, desc, unit, interval
        self.lines: list[str] = []
        self.postfix: dict[str, object] = {}
        self.start_n, self.t0, self.drawn_at = initial, time.perf_counter(), float("-inf")
        self.closed = False
        if display is None:
            from IPython.display import display
        self._display, self.handle = display, None
        self.draw()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.perf_counter() - self.drawn_at >= self.interval:
            self.draw()

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self.postfix = values
        if refresh:
            self.draw()

    def write(self, line: str) -> None:
        self.lines.append(line)
        self.draw()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.draw()

    def status(self) -> tuple[str, str]:
        """The bar's text in two parts: ('training  45% 211/468 steps', '0:12 elapsed, ~0:15 left, 17.6 steps/s  epoch 1 ...')."""
        elapsed = time.perf_counter() - self.t0
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 and done else 0.0
        pct = f"{100 * self.n / self.total:3.0f}%" if self.total else ""
        head = "  ".join(p for p in (self.desc, pct, f"{self.n}/{self.total} {self.unit}s") if p)
        speed = f", {rate:.1f} {self.unit}s/s" if rate else ""
        if self.closed:
            timing = f"{'done' if self.n >= self.total else 'stopped'} in {clock(elapsed)}{speed}"
        else:
            timing = f"{clock(elapsed)} elapsed" + (f", ~{clock((self.total - self.n) / rate)} left" if rate else "") + speed
        return head, "  ".join([timing, *(f"{k} {v}" for k, v in self.postfix.items())])

    def bundle(self) -> dict[str, str]:
        """The output as a MIME bundle: {'text/html': ..., 'text/plain': ...}."""
        head, detail = self.status()
        plain = "\n".join([*self.lines, f"{head}  {detail}"])
        mono = "font-family: var(--jp-code-font-family, monospace)"
        bar = (f"<progress value='{min(self.n, self.total)}' max='{max(self.total, 1)}' style='width: 20em; vertical-align: middle'>"
               f"</progress> <span style='{mono}'>{html.escape(head)}</span>")
        table = f"<pre style='margin: 0.3em 0 0 0'>{html.escape(chr(10).join(self.lines))}</pre>" if self.lines else ""
        return {"text/html": f"<div>{bar}<br><span style='{mono}'>{html.escape(detail)}</span>{table}</div>", "text/plain": plain}

    def draw(self) -> None:
        self.drawn_at = time.perf_counter()
        if self.handle is None:
            self.handle = self._display(self.bundle(), raw=True, display_id=True)
        else:
            self.handle.update(self.bundle(), raw=True)


class PlainLines:
    """Headless: no bar, the table lines printed as they come (the same interface as tqdm's)."""

    def __init__(self, total: int, initial: int = 0):
        self.total, self.n = total, initial

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, refresh: bool = True, **values) -> None:
        pass

    def write(self, line: str) -> None:
        print(line, flush=True)

    def close(self) -> None:
        pass


def progress_bar(total: int, initial: int = 0, show: bool = True, desc: str = "training"):
    """A bar for `total` steps: HTMLProgress in Jupyter, tqdm in a terminal, PlainLines when `show` is False."""
    if not show:
        return PlainLines(total, initial)
    if in_jupyter():
        return HTMLProgress(total, initial, desc=desc)
    from tqdm import tqdm  # plain tqdm: text on the terminal, never the Jupyter widget of tqdm.auto

    return tqdm(total=total, initial=initial, desc=desc, unit="step", mininterval=1.0, leave=False)


class RunSoFar(Protocol):
    """What the log reads of a run (`vit_helpers.train.TrainResult`, which imports this module: the hint is its shape)."""
    history: list[dict]
    epochs: int

    @property
    def train_seconds(self) -> float: ...


class EpochLog:
    """A compact table, one line every `cfg.log_every` epochs (and the first and last), under a progress bar;
    `with EpochLog(...) as log:` closes the bar on leaving, also after an error."""

    def __init__(self, cfg: "TrainConfig", steps_per_epoch: int, result: RunSoFar, bar: bool):
        self.cfg, self.spe, self.result, self.header_done = cfg, steps_per_epoch, result, False
        # With a time budget the length is fixed only after the first epoch: until then the bar counts that epoch.
        epochs = 1 if cfg.budget_minutes and not result.history else result.epochs
        self.bar = progress_bar(epochs * steps_per_epoch, len(result.history) * steps_per_epoch, show=bar)

    def write(self, line: str) -> None:
        self.bar.write(line)  # tqdm writes it above its bar, HTMLProgress into its table, PlainLines prints it

    def note(self, line: str | None) -> None:
        """A line that may be absent (e.g. what the compile cache did, or None when it did nothing)."""
        if line:
            self.write(line)

    def epoch(self, r: dict) -> None:
        n, total = r["epoch"], self.result.epochs
        self.bar.total = total * self.spe  # a budget may have changed it after the first epoch
        self.bar.set_postfix(epoch=n, loss=f"{r['train_loss']:.3f}", val_acc=f"{r['val_acc']:.3f}", refresh=False)
        if n == 1 or n % self.cfg.log_every == 0 or n == total:
            if not self.header_done:
                self.write(HEADER)
                self.header_done = True
            self.write(f"{f'{n}/{total}':>9}  {r['train_loss']:10.3f}  {r['train_acc']:9.3f}  {r['val_loss']:8.3f}  "
                       f"{r['val_acc']:7.3f}  {r['lr']:8.2e}  {r['images_per_s']:8,.0f}  {self.result.train_seconds:5.0f}s")

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> EpochLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
