"""Execute the notebook series headless, in order, and report where the results are.

    python tools/run_series.py                 # executed copies go to outputs/notebooks/
    python tools/run_series.py --inplace       # store the outputs in notebooks/*.ipynb (for a release run)
"""
from __future__ import annotations

import argparse
import json
import sys
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
    p.add_argument("--only", nargs="*", help="notebook name prefixes to run, e.g. 01 05")
    p.add_argument("--cell-timeout", type=int, default=3600)
    a = p.parse_args(argv)
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if a.only:
        notebooks = [n for n in notebooks if any(n.name.startswith(o) for o in a.only)]
    out_dir = ROOT / "notebooks" if a.inplace else paths.outputs_dir() / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    print(runtime.describe(), flush=True)
    for nb_path in notebooks:
        t0 = time.perf_counter()
        print(f"running {nb_path.name} ...", end=" ", flush=True)
        nb = nbformat.read(nb_path, as_version=4)
        client = NotebookClient(nb, timeout=a.cell_timeout, kernel_name="python3", resources={"metadata": {"path": str(nb_path.parent)}})
        try:
            client.execute()
        finally:
            nbformat.write(nb, out_dir / nb_path.name)
        print(f"done in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\nexecuted notebooks: {out_dir}")
    print(f"checkpoints: {paths.checkpoint_dir() / runtime.RECIPE}")
    results = paths.outputs_dir() / f"results_{runtime.RECIPE}.json"
    if results.is_file():
        r = json.loads(results.read_text())
        print(f"test accuracy: {r['test_accuracy']:.2%} (95% CI {r['ci95'][0]:.2%} - {r['ci95'][1]:.2%}), "
              f"with flip TTA {r['test_accuracy_flip_tta']:.2%}; model: {r['model_source']}; results: {results}")
    else:
        print(f"test accuracy: not computed (notebook 06 did not run; expected {results})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
