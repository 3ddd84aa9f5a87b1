"""Check the training progress display in a real browser: JupyterLab 4, driven headless by Playwright.

A developer tool, not run in CI. It starts `jupyter lab` on 127.0.0.1 with a token, opens a small notebook that
calls `vit_helpers.train.train` on synthetic data for about `--seconds` seconds, runs it, and reads the kernel
status in the status bar once a second while it trains (it must read Busy: tqdm's widget made it read Idle).
Then it saves, closes, reloads the page, reopens the notebook and checks that no "Error displaying widget" or
"model not found" appears and that the finished table is there. It also opens a copy of a stored notebook of the
series and checks that it does not open already modified. Screenshots and a JSON report go to --out.

    python3 -m venv /tmp/pw && /tmp/pw/bin/pip install playwright
    apt-get install chromium        # when Playwright's own browser download is not reachable
    /tmp/pw/bin/python tools/check_jupyterlab.py --jupyter .venv/bin/jupyter --chromium /usr/bin/chromium

Exit status 0 when every check passed.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TRAIN_CELL = """\
import torch
from vit_helpers import ModelArgs, VisionTransformer
from vit_helpers.data import ImageData
from vit_helpers.train import TrainConfig, train

g = torch.Generator().manual_seed(0)
palette = torch.randint(0, 256, (5, 3), generator=g).float()


def make(n):  # a learnable toy problem: each class a colour, with noise
    y = torch.randint(0, 5, (n,), generator=g)
    return (palette[y][:, :, None, None] + 40 * torch.randn(n, 3, 16, 16, generator=g)).clamp(0, 255).to(torch.uint8), y


data = ImageData(*make(1024), *make(256), classes=tuple("abcde"), source="synthetic")
model = VisionTransformer(ModelArgs(dim=32, hidden_dim=64, n_heads=4, n_layers=2, patch_size=4, image_size=16, n_classes=5, dropout=0.0))
cfg = TrainConfig(epochs=200, budget_minutes={minutes}, batch_size=32, optimizer="adamw", lr=3e-3, schedule="cosine",
                  warmup_epochs=1, pipeline="gpu", augment="crop_flip", val_size=256, eval_batch_size=256, log_every=5)
result = train(model, data, cfg, progress=True)
print(f"trained {{len(result.history)}} epochs")
"""


def notebook(cells: list[str]) -> dict:
    return {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
                       "source": src} for i, src in enumerate(cells)],
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
            "nbformat": 4, "nbformat_minor": 5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, timeout: float = 90) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            time.sleep(0.5)
    raise SystemExit(f"jupyter lab did not answer at {url} within {timeout} s")


def kernel_status(page) -> str:
    """The kernel status as the status bar shows it, e.g. 'Python 3 (ipykernel) | Busy'."""
    texts = page.locator("#jp-main-statusbar .jp-StatusBar-TextItem").all_inner_texts()
    return " / ".join(t for t in texts if "|" in t) or " / ".join(texts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jupyter", default=str(ROOT / ".venv" / "bin" / "jupyter"), help="the project's jupyter executable")
    p.add_argument("--chromium", default=shutil.which("chromium") or "", help="a Chromium to drive ('' for Playwright's own)")
    p.add_argument("--seconds", type=float, default=25, help="about how long the notebook trains")
    p.add_argument("--stored", default="01_patching", help="a stored notebook of the series to open (checked not modified on opening)")
    p.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "check_jupyterlab"), help="screenshots and report.json")
    a = p.parse_args(argv)
    from playwright.sync_api import sync_playwright

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="jlab_check_"))
    (work / "check.ipynb").write_text(json.dumps(notebook(
        ["from vit_helpers import runtime\nruntime.print_mode()", TRAIN_CELL.format(minutes=round(a.seconds / 60, 3))])))
    shutil.copy(ROOT / "notebooks" / f"{a.stored}.ipynb", work / f"{a.stored}.ipynb")
    token, port = secrets.token_hex(16), free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), VIT_PROGRESS="1", VIT_MODE="quick")
    env.pop("VIT_CACHE_DIR", None)
    server = subprocess.Popen([a.jupyter, "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", f"--IdentityProvider.token={token}",
                               f"--ServerApp.root_dir={work}", "--LabApp.expose_app_in_browser=True",
                               *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])],  # containers
                              env=env, stdout=open(out / "jupyter.log", "w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    report: dict = {"work_dir": str(work), "checks": {}}
    try:
        wait_for_server(f"{base}/api/status?token={token}")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=a.chromium or None, headless=True)
            page = browser.new_page(viewport={"width": 1440, "height": 900})

            def open_notebook(name: str, workspace: str) -> None:  # a fresh workspace: nothing else restored around it
                page.goto(f"{base}/lab/workspaces/{workspace}/tree/{name}?reset&token={token}")
                page.wait_for_selector(".jp-Notebook", timeout=90_000)
                page.wait_for_function("() => document.querySelector('#jp-main-statusbar')?.innerText.includes('Idle')", timeout=120_000)

            def run(command: str, args: dict | None = None) -> None:  # started, not awaited: run-all resolves only at the end
                page.evaluate("([c, a]) => { window.jupyterapp.commands.execute(c, a); }", [command, args or {}])

            def current(expression: str):
                return page.evaluate(f"() => window.jupyterapp.shell.currentWidget.{expression}")

            # 1. Train, sampling the status bar and the progress output once a second.
            open_notebook("check.ipynb", "train")
            run("notebook:run-all-cells")
            samples, t0 = [], time.time()
            while time.time() - t0 < a.seconds + 120:
                time.sleep(1)
                outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
                progress_text = next((t for t in reversed(outputs) if "steps" in t), "")
                status_line = next((ln for ln in progress_text.splitlines() if "steps" in ln), "")
                samples.append({"t": round(time.time() - t0, 1), "status": kernel_status(page), "progress": status_line,
                                "finished": "done in" in progress_text or "stopped in" in progress_text})
                if len(samples) == 5:
                    page.screenshot(path=str(out / "1_training.png"))
                if "trained" in " ".join(outputs) and "Idle" in samples[-1]["status"]:
                    break
            page.screenshot(path=str(out / "2_trained.png"))
            during = [s for s in samples if s["progress"] and not s["finished"]]
            report["samples"] = samples
            report["checks"]["busy_while_training"] = bool(during) and all("Busy" in s["status"] for s in during)
            report["checks"]["progress_moved"] = len({s["progress"].split("steps")[0] for s in during}) > 1
            report["checks"]["finished"] = any("trained" in t for t in page.locator(".jp-OutputArea-output").all_inner_texts())

            # 2. Save, close, reopen in a fresh page: no widget error, the finished table is there.
            run("docmanager:save")
            time.sleep(2)
            run("application:close-all")
            time.sleep(1)
            saved = json.loads((work / "check.ipynb").read_text())
            mimes = sorted({m for c in saved["cells"] for o in c.get("outputs", []) for m in o.get("data", {})})
            report["saved_output_mime_types"] = mimes
            report["checks"]["saved_without_widget"] = not any("widget" in m for m in mimes)
            open_notebook("check.ipynb", "reopen")
            time.sleep(2)
            body = page.inner_text("body")
            page.screenshot(path=str(out / "3_reopened.png"), full_page=True)
            report["checks"]["reopened_without_widget_error"] = not any(
                s in body for s in ("Error displaying widget", "model not found"))
            report["checks"]["reopened_shows_finished_table"] = "val acc" in body and "done in" in body
            report["reopened_progress_text"] = next((t for t in page.locator(".jp-OutputArea-output").all_inner_texts()
                                                     if "steps" in t), "")
            report["checks"]["reopened_unmodified"] = not current("context.model.dirty")
            run("application:close-all")

            # 3. A stored notebook of the series, opened: what JupyterLab changes in it. It copies the running kernel's
            # kernelspec and language_info into the notebook and marks it modified when they differ: the stored
            # metadata must differ at most by the Python version, which no stored value matches on every machine.
            open_notebook(f"{a.stored}.ipynb", "stored")
            time.sleep(3)  # let the kernel's info reach the model
            on_disk = json.loads((work / f"{a.stored}.ipynb").read_text())["metadata"]
            in_browser = current("model.metadata")
            changed = {k: [on_disk.get(k), in_browser.get(k)] for k in sorted(set(on_disk) | set(in_browser)) if on_disk.get(k) != in_browser.get(k)}
            report["stored_notebook"] = {"modified_on_opening": current("context.model.dirty"), "metadata_changed": changed}
            only_version = all(k == "language_info" for k in changed) and (
                not changed or {**changed["language_info"][0], "version": None} == {**changed["language_info"][1], "version": None})
            report["checks"]["stored_notebook_changes_on_opening_at_most_by_python_version"] = only_version
            page.screenshot(path=str(out / "4_stored_opened.png"))
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    (out / "report.json").write_text(json.dumps(report, indent=1))
    for name, ok in report["checks"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(f"samples of the status bar while training: {[s['status'].split('|')[-1].strip() for s in report.get('samples', [])]}")
    print(f"report and screenshots: {out}")
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
