"""`make test` on a machine with a GPU, in parts that each fit a 10-minute command, recorded in the release.

    python tools/gpu_tests.py units              # every test in tests/ (the GPU tests run instead of skipping)
    python tools/gpu_tests.py notebooks-1        # nbval over notebooks 01-05 in full mode
    python tools/gpu_tests.py notebooks-2        # 06-08
    python tools/gpu_tests.py notebooks-3        # 09
    python tools/gpu_tests.py notebooks-4        # 10 (its full mode alone takes 7-9 minutes of an H200)
    python tools/gpu_tests.py units -- -n 6 -v   # anything after -- goes to pytest (here: pytest-xdist's workers;
                                                 # -v prints each result as it ends, so a run cut short still
                                                 # names its failures)

Each part runs pytest with the project's settings (pyproject.toml) and adds its counts to release/manifest.json under
"gpu_tests": {"gpu", "passed", "skipped", "failed", "seconds", "command", "parts": {part: the same counts}}, the
top-level counts summed over the parts run so far on the release's GPU. A CI runner with a GPU runs the five parts
(or `make test`, which is all of them in one command, where no limit applies). The exit status is pytest's.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = {
    "units": ["tests"],
    "notebooks-1": [f"notebooks/{n}.ipynb" for n in ("01_patching", "02_attention", "03_transformer_block",
                                                     "04_vision_transformer", "05_training")],
    "notebooks-2": [f"notebooks/{n}.ipynb" for n in ("06_going_fast", "07_evaluation", "08_lora")],
    "notebooks-3": ["notebooks/09_distillation.ipynb"],
    "notebooks-4": ["notebooks/10_small_data.ipynb"],
}


def counts(junit: Path) -> dict:
    """passed, skipped, failed (errors included) from a pytest JUnit XML report."""
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "skipped", "failures", "errors")}
    failed = total["failures"] + total["errors"]
    return {"passed": total["tests"] - total["skipped"] - failed, "skipped": total["skipped"], "failed": failed}


def record(part: str, result: dict) -> dict:
    """Add one part's counts to release/manifest.json (under the release's lock; refused on another GPU)."""
    spec = importlib.util.spec_from_file_location("run_series", ROOT / "tools" / "run_series.py")
    run_series = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_series)
    with run_series.manifest_lock():
        manifest, here = run_series.open_manifest()
        tests = manifest.get("gpu_tests") or {}
        parts = {**tests.get("parts", {}), part: result}
        summed = {k: sum(p[k] for p in parts.values()) for k in ("passed", "skipped", "failed")}
        manifest["gpu_tests"] = {"gpu": here["gpu"], **summed, "seconds": round(sum(p["seconds"] for p in parts.values()), 1),
                                 "command": "python tools/gpu_tests.py " + " ".join(sorted(parts)), "parts": parts}
        run_series.write_manifest(manifest)
    return manifest["gpu_tests"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("part", choices=sorted(PARTS))
    p.add_argument("pytest_args", nargs="*", help="after --: more pytest arguments")
    a = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("tools/gpu_tests.py records a GPU run: no CUDA GPU here (on a CPU, `make test` is the whole suite)")
    # tools/ on the path for the plugin that prints each failure as it happens (a part cut short keeps its reasons)
    # VIT_GPU_TESTS_PART: the run being recorded, so that the test that checks the record waits for it (test_release)
    env = {**os.environ, "VIT_PROGRESS": "0", "VIT_GPU_TESTS_PART": a.part, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "tools"), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", *PARTS[a.part], f"--junitxml={junit}", "-p", "pytest_failures_at_once",
               *a.pytest_args]
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        seconds = time.perf_counter() - t0
        if not junit.is_file():
            raise SystemExit(f"pytest wrote no report (exit status {rc}); nothing recorded")
        result = {**counts(junit), "seconds": round(seconds, 1),
                  "command": " ".join(["pytest", *PARTS[a.part], *a.pytest_args]),
                  "date": time.strftime("%Y-%m-%d")}
    summary = record(a.part, result)
    print(f"{a.part}: {result['passed']} passed, {result['failed']} failed, {result['skipped']} skipped in {seconds:.0f} s; "
          f"recorded in release/manifest.json (parts so far: {', '.join(sorted(summary['parts']))})")
    return rc


if __name__ == "__main__":
    sys.exit(main())
