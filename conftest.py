"""pytest settings for the whole repository: the unit tests in tests/ and nbval over notebooks/."""
import os

import pytest
import torch

# Under pytest-xdist (make test runs two workers; the GPU parts more: tools/gpu_tests.py units -- -n N) each worker
# would start one thread per core, N times over; a CPU test then crawls and one that runs a script under a time limit
# can miss it. Each worker, and the processes it starts (a notebook's kernel among them), gets its share of the cores.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    torch.set_num_threads(_THREADS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist; without it installed, pytest never calls this
def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (`make test` runs two workers): each notebook's cells go to one worker, together and in order,
    since nbval runs them in one kernel; every other test goes to whichever worker is free.

    xdist's own `--dist loadgroup` would do this through `xdist_group` marks, but its renaming of node ids does not
    take with pytest 9, so the cells of one notebook ended up on both workers."""
    from xdist.scheduler import LoadScopeScheduling

    class NotebooksWhole(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return file if file.endswith(".ipynb") else nodeid

    return NotebooksWhole(config, log)
