"""Execute the notebook series headless, in order, and report where the results are.

    python tools/run_series.py                 # executed copies go to outputs/notebooks/
    python tools/run_series.py --inplace       # store the outputs in notebooks/*.ipynb
    python tools/run_series.py --release       # on a GPU: the release (make release), see below

The release executes every notebook in place with a fresh training run (VIT_RETRAIN=1), makes notebook
05's best checkpoint the released weights, then runs the benchmark (benchmarks/train_speed.py, the rows in
RELEASE_BENCHMARK, one invocation per seed of BENCHMARK_SEEDS) and records in release/ what the README quotes: the GPU,
the date, the versions, each notebook's time, the results files the notebooks write (outputs/*.json: 06's speed ladder
becomes release/speed_ladder.json) and the benchmark (release/benchmark/seed<N>.json, merged in release/benchmark.json).
05 runs first, so that 04 and 06-09 read the model this release trained. Where one command cannot hold it all, run it
in parts (--only 01 02 03 04 05 06, then --only 07 08 09, then --only benchmark --seeds 0, then --seeds 1, then
--seeds 2) on the same checkout, carrying checkpoints/ between them: each part adds to release/, and every part must
run on the same kind of GPU.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vit_helpers import paths, runtime  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inplace", action="store_true", help="write outputs into notebooks/ instead of outputs/notebooks/")
    p.add_argument("--only", nargs="*", help="notebook name prefixes to run, e.g. 01 05; with --release, \"benchmark\" runs the benchmark")
    p.add_argument("--cell-timeout", type=int, default=3600)
    p.add_argument("--release", action="store_true", help="on a GPU: execute in place, retrain, update the released weights and release/")
    p.add_argument("--seeds", type=int, nargs="+", default=list(BENCHMARK_SEEDS), help="with --release: the benchmark's seeds "
                   f"to run now, one invocation each (default: all of {list(BENCHMARK_SEEDS)}; a part may run some of them)")
    a = p.parse_args(argv)
    if a.release:
        import torch

        if not torch.cuda.is_available() or runtime.MODE != "full":
            raise SystemExit("--release needs a CUDA GPU and full mode: the stored outputs and the released weights come from the GPU run")
        a.inplace = True
        os.environ["VIT_RETRAIN"] = "1"
        if not a.only:  # the whole release in one go: a new record (parts, with --only, add to the one there)
            (RELEASE_DIR / "manifest.json").unlink(missing_ok=True)
        open_manifest()  # refuses a part on another GPU than the release's, before anything runs
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if a.only:
        notebooks = [n for n in notebooks if any(n.name.startswith(o) for o in a.only)]
    if a.release:
        notebooks = release_order(notebooks)
    benchmark = a.release and (not a.only or "benchmark" in a.only)
    if benchmark and any(r.startswith("airbench") for r in RELEASE_BENCHMARK) and importlib.util.find_spec("airbench") is None:
        raise SystemExit("the release benchmark has airbench rows, and the airbench package is missing (checked before anything "
                         "runs): pip install airbench (the README's 'Two commands' says how to install it offline)")
    if a.only and not notebooks and not benchmark:
        raise SystemExit(f"--only {' '.join(a.only)} names no notebook{' (and benchmark only with --release)' if 'benchmark' in a.only else ''}")
    os.environ.setdefault("VIT_PROGRESS", "0")  # headless: a compact log table, no progress widgets in the outputs
    out_dir = ROOT / "notebooks" if a.inplace else paths.outputs_dir() / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    print(runtime.describe(), flush=True)
    for nb_path in notebooks:
        t0 = time.perf_counter()
        print(f"running {nb_path.name} ...", end=" ", flush=True)
        nb = nbformat.read(nb_path, as_version=4)
        km = ipc_kernel_manager()
        client = NotebookClient(nb, timeout=a.cell_timeout, km=km, resources={"metadata": {"path": str(nb_path.parent)}})
        try:
            client.execute()
        finally:
            if km.has_kernel:  # a kernel manager we made is ours to stop (nbclient stops only the ones it makes)
                km.shutdown_kernel(now=False)
            nbformat.write(without_volatile_metadata(nb), out_dir / nb_path.name)
        seconds = time.perf_counter() - t0
        print(f"done in {seconds:.0f} s", flush=True)
        if a.release:
            record_release(nb_path.stem, seconds)
    if benchmark:
        run_release_benchmark(a.seeds)
    if not notebooks:
        return 0
    print(f"\nexecuted notebooks: {out_dir}")
    print(f"checkpoints: {paths.checkpoint_dir() / runtime.RECIPE}")
    results = paths.outputs_dir() / f"results_{runtime.RECIPE}.json"
    if results.is_file():
        r = json.loads(results.read_text())
        print(f"test accuracy: {r['test_accuracy']:.2%} (95% CI {r['ci95'][0]:.2%} - {r['ci95'][1]:.2%}), "
              f"with flip TTA {r['test_accuracy_flip_tta']:.2%}; model: {r['model_source']}; results: {results}")
    else:
        print(f"test accuracy: not computed (notebook 07 did not run; expected {results})")
    return 0


# Every notebook's metadata, the same for all (tests/test_notebooks_meta.py holds them to it), plus the version of the
# Python that ran the release (language_info.version, the manifest's "python"). JupyterLab copies the running kernel's
# kernelspec and language_info into a notebook it opens and marks it modified when they differ (checked in a browser
# with tools/check_jupyterlab.py): the display name below is the one every local ipykernel reports, and a stored
# version means a learner on the release's Python opens every notebook unmodified (one on another version still sees
# the mark: no stored value matches every machine, and a missing one matches none).
NOTEBOOK_METADATA = {
    "accelerator": "GPU",  # Colab: open on a GPU runtime
    "colab": {"provenance": []},
    "jupytext": {"cell_metadata_filter": "tags,-all", "main_language": "python", "notebook_metadata_filter": "-all"},
    "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
    "language_info": {"codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py",
                      "mimetype": "text/x-python", "name": "python", "nbconvert_exporter": "python",
                      "pygments_lexer": "ipython3"},
}


def notebook_metadata(python_version: str) -> dict:
    """NOTEBOOK_METADATA with the version of the Python that ran the notebook in language_info."""
    metadata = json.loads(json.dumps(NOTEBOOK_METADATA))
    metadata["language_info"]["version"] = python_version
    return metadata


def without_volatile_metadata(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook with NOTEBOOK_METADATA and this Python's version, and its cells without the run's timings
    (nbclient's 'execution' metadata), so that re-running a notebook changes only its outputs."""
    nb.metadata = nbformat.from_dict(notebook_metadata(platform.python_version()))
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    return nb


RELEASE_DIR = ROOT / "release"
# The benchmark's rows in a release (issue 29's targets, one H200, teacher included): the teacher CNN; the distilled
# ViT with SPT + LSA at 265 s (distilled_spt_lsa, the headline), the 150-s recipe (distilled_short) and the 20-s
# attempt (distilled_sprint); and the airbench CNNs as the external peer on the same data and GPU (optional package, see
# the README). The plain distilled recipe (notebook 09's) is not a row: its three seeds are in benchmarks/NOTES.md (run
# 11), and one more 265-s row would not fit a seed's invocation into a 10-minute command. train_speed.py starts
# torch.compile cold (empty caches), as on a fresh machine, even after the notebooks.
RELEASE_BENCHMARK = ("teacher", "distilled_spt_lsa", "distilled_short", "distilled_sprint", "airbench94", "airbench96")
# Each recipe of the benchmark runs with these seeds, one invocation of train_speed.py per seed (each in its own process,
# so each starts torch.compile cold). One seed takes about 9 minutes on an H200: a part (--only benchmark --seeds 1) may
# run some of them. release/benchmark/seed<N>.json holds each; release/benchmark.json merges those present.
BENCHMARK_SEEDS = (0, 1, 2)


def release_order(notebooks: list[Path]) -> list[Path]:
    """In a release, 05 (which trains the released model) runs first: 04, 07, 08 and 09 then read the model of this
    release, not the previous one's. The others keep their order."""
    return sorted(notebooks, key=lambda n: not n.name.startswith("05"))


def open_manifest() -> tuple[dict, dict]:
    """(release/manifest.json so far, this machine's record); refuses a part on another GPU than the release's."""
    import torch

    manifest_path = RELEASE_DIR / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    here = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"), "command": "python tools/run_series.py --release"}
    if manifest.get("gpu") not in (None, here["gpu"]):
        raise SystemExit(f"release/manifest.json was made on {manifest['gpu']}, this is {here['gpu']}: one release, one GPU "
                         "(delete release/manifest.json to start a new release)")
    return manifest, here


def ipc_kernel_manager():
    """A python3 kernel reached through Unix sockets in a private folder instead of TCP ports: over TCP, ipykernel warns
    on every start that its traffic is unencrypted, once per notebook in the terminal. Its real errors still show."""
    from jupyter_client.manager import KernelManager

    sockets = Path(tempfile.mkdtemp(prefix="vit-kernel-"))  # only this user can reach it; removed at exit
    atexit.register(shutil.rmtree, sockets, True)
    return KernelManager(kernel_name="python3", transport="ipc", ip=str(sockets / "kernel"))


@contextlib.contextmanager
def manifest_lock():
    """Parts of one release may run at once, one per GPU of a machine (e.g. 05 on one, the benchmark on another):
    each reads, changes and writes release/manifest.json under this lock, so no part's record overwrites another's."""
    RELEASE_DIR.mkdir(exist_ok=True)
    with open(RELEASE_DIR / ".manifest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_manifest(manifest: dict) -> None:
    RELEASE_DIR.mkdir(exist_ok=True)
    (RELEASE_DIR / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def run_release_benchmark(seeds: list[int]) -> None:
    """One invocation of benchmarks/train_speed.py over RELEASE_BENCHMARK per seed, into release/benchmark/seed<N>.json,
    each recorded in the manifest as it ends; then release/benchmark.json merges every seed's file."""
    open_manifest()  # refuses another GPU before the benchmark runs
    if unknown := sorted(set(seeds) - set(BENCHMARK_SEEDS)):
        raise SystemExit(f"--seeds {unknown}: the release benchmark's seeds are {list(BENCHMARK_SEEDS)}")
    for seed in seeds:
        out = RELEASE_DIR / "benchmark" / f"seed{seed}.json"
        cmd = [sys.executable, str(ROOT / "benchmarks" / "train_speed.py"), "--recipes", ",".join(RELEASE_BENCHMARK), "--seed", str(seed),
               "--out", str(out)]
        print("running the benchmark:", " ".join(["benchmarks/train_speed.py", *cmd[3:-1], out.relative_to(ROOT).as_posix()]), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        with manifest_lock():  # read again: other parts may have added to it meanwhile
            manifest, here = open_manifest()
            manifest.update(here)
            record = manifest.setdefault("benchmark", {})
            record.setdefault("seeds", {})[str(seed)] = {"file": out.relative_to(ROOT).as_posix(), "date": here["date"],
                                                         "seconds": round(time.perf_counter() - t0, 1)}
            merge_release_benchmark(record)
            write_manifest(manifest)


def merge_release_benchmark(record: dict) -> None:
    """release/benchmark.json from the seeds the manifest's benchmark record lists; the record's date is the oldest
    seed's (the benchmark is as old as its oldest part)."""
    files = [ROOT / record["seeds"][s]["file"] for s in sorted(record["seeds"], key=int)]
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_speed.py"), "--merge", *map(str, files), "--out",
                    str(RELEASE_DIR / "benchmark.json")], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    record.update(file="release/benchmark.json", rows=list(RELEASE_BENCHMARK),
                  date=min(part["date"] for part in record["seeds"].values()),
                  seconds=round(sum(part["seconds"] for part in record["seeds"].values()), 1))


def record_release(notebook: str, seconds: float) -> None:
    """Add one executed notebook to release/manifest.json; after 05, its best model becomes the released weights."""
    with manifest_lock():
        _record_release(notebook, seconds)


def _record_release(notebook: str, seconds: float) -> None:
    from vit_helpers import checkpoint

    manifest, here = open_manifest()
    manifest.update(here)
    manifest.setdefault("notebooks", {})[notebook] = {"seconds": round(seconds, 1), "date": here["date"]}
    if notebook.startswith("05"):
        best = paths.checkpoint_dir() / "fast" / "best.pt"
        state = checkpoint.load(best, keys=checkpoint.CHECKPOINT_KEYS)
        checkpoint.atomic_save({**state, "made_by": f"notebook {notebook}, release on {here['gpu']} ({here['date']})"}, paths.RELEASED_WEIGHTS)
        manifest["released_weights"] = {"from": f"checkpoints/fast/best.pt of notebook {notebook}", "best_val_acc": state["best_val_acc"],
                                        "best_epoch": state["best_epoch"], "epochs": state["epochs"]}
    if notebook.startswith("06"):
        manifest["speed_ladder"] = check_speed_ladder(here, time.time() - seconds)
    RELEASE_DIR.mkdir(exist_ok=True)
    for results in sorted(paths.outputs_dir().glob("*.json")):  # what the notebooks measured
        shutil.copy(results, RELEASE_DIR / results.name)
    write_manifest(manifest)


def check_speed_ladder(here: dict, started: float) -> dict:
    """Notebook 06 measures the speed ladder and writes outputs/speed_ladder.json, which the release copies to
    release/speed_ladder.json; refuse a file this run did not write, or one from another GPU."""
    from vit_helpers.speed import SpeedLadder

    path = paths.outputs_dir() / "speed_ladder.json"
    if not path.is_file() or path.stat().st_mtime < started:
        raise SystemExit(f"notebook 06 ran but did not write {path} in this run: it writes it only in full mode on a GPU")
    ladder = SpeedLadder.load(path)
    if ladder.gpu != here["gpu"]:
        raise SystemExit(f"{path} was measured on {ladder.gpu}, this release runs on {here['gpu']}")
    return {"file": "release/speed_ladder.json", "gpu": ladder.gpu, "date": ladder.date, "rows": len(ladder.rows)}


if __name__ == "__main__":
    sys.exit(main())
