"""A pytest plugin: print each failure's report the moment it happens, not at the end of the session.

tools/gpu_tests.py loads it (`-p pytest_failures_at_once`): a part that runs out of its command's time is stopped
before pytest's summary, and under pytest-xdist's workers `-v` names a failure without its reason. With this plugin
the log holds every failure's traceback up to the moment the run stopped. In xdist's workers it does nothing (the
controller receives their reports and prints them).
"""
from __future__ import annotations

import sys

_config = None


def pytest_configure(config):
    global _config
    _config = config


def pytest_runtest_logreport(report):
    if not report.failed or (_config is not None and hasattr(_config, "workerinput")):
        return
    text = getattr(report, "longreprtext", "") or str(report.longrepr)
    lines = text.splitlines()
    if len(lines) > 80:  # the end of a traceback says what failed; its start is the call chain
        lines = lines[:20] + [f"... ({len(lines) - 60} lines left out) ..."] + lines[-40:]
    sys.stdout.write(f"\n==== FAILED at once: {report.nodeid} ({report.when}) ====\n" + "\n".join(lines) + "\n==== end ====\n")
    sys.stdout.flush()
