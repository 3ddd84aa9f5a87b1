"""The mode switch: read once, forced by VIT_MODE, and described in words (vit_helpers.runtime)."""
import pytest

from vit_helpers import runtime


def test_vit_mode_forces_either_mode_and_refuses_others():
    assert runtime.detect_mode({"VIT_MODE": "quick"}) == "quick"
    assert runtime.detect_mode({"VIT_MODE": " FULL "}) == "full"
    with pytest.raises(ValueError, match="VIT_MODE='fast' is not a mode"):
        runtime.detect_mode({"VIT_MODE": "fast"})


def test_the_device_name_is_one_line_and_ends_the_mode_line():
    """Notebook 05 prints the device by itself (issue 28: slicing describe() after 'device: ' also took the indented
    lines below it); the mode line keeps naming it too, as tests/test_release.py reads it."""
    name = runtime.device_name()
    assert name and "\n" not in name
    first, *rest = runtime.describe().splitlines()
    assert first.startswith(f"Mode: {runtime.MODE} (") and first.endswith(f"; device: {name}")
    assert rest and all(line.startswith("  ") for line in rest)  # what the mode trains on, indented below
