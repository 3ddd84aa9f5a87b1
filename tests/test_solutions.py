"""Every notebook's exercises: each has one Hint and one Solution block, and every solution's code runs.

The exercises live in the "## Exercises" markdown at the end of each notebook, in this shape:

    1. **Short title.** The task.

    <details><summary>Hint</summary>
    ...
    </details>
    <details><summary>Solution</summary>

    ```python
    ...self-contained code...
    ```
    ...
    </details>

Each ```python block inside a Solution runs in a fresh interpreter, with cwd notebooks/ and VIT_MODE=quick,
as a learner would run it by pasting it into a new cell.

A solution shows what it produces: a ```text block after its code holds the output of a real run, introduced by
a line that names the mode (e.g. "Output of our run (quick mode, 2 CPU cores):"). Where a solution states its
output, the run must print the same lines with the same words; only the numbers may differ (timings, and the
last digits of a float on another CPU). The notebooks in STATES_OUTPUT must state one for every solution.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import jupytext
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
TWINS = sorted((NB_DIR / "py").glob("[0-9][0-9]_*.py"))
# A solution's time limit, for the 2 CPU threads its stated output was made with (the slowest, 09's exercise 1, takes
# 84 s there uncontended, and up to 98 s on a busy machine); a process given fewer threads (a
# worker of pytest-xdist on a shared machine, see conftest.py) gets a longer limit in proportion.
TIMEOUT_S = 180 * max(1.0, 2 / int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads()))
# Read at import, before conftest's fixtures point VIT_CACHE_DIR at an empty folder per test: the solutions
# should reuse the decoded-dataset cache, as a learner's session would.
BASE_ENV = dict(os.environ)

HINT = "<details><summary>Hint</summary>"
SOLUTION = "<details><summary>Solution</summary>"
ITEM = re.compile(r"^(\d+)\.\s")  # a top-level numbered item: "1. **Title.** ..."
CODE = re.compile(r"^[ \t]*```python[ \t]*\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)
OUTPUT = re.compile(r"^[ \t]*```text[ \t]*\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)
MODE_NAMED = re.compile(r"\b(quick|full) mode\b")
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")
STATES_OUTPUT = {"01_patching", "02_attention", "03_transformer_block", "04_vision_transformer", "05_training", "07_evaluation", "08_lora", "09_distillation", "10_small_data"}  # notebooks whose every solution must state its output


@dataclass
class Exercise:
    number: str
    text: str
    problems: list[str] = field(default_factory=list)
    solutions: list[str] = field(default_factory=list)
    outputs: list[str | None] = field(default_factory=list)  # the stated output of each solution, or None


def exercises_markdown(cells: list[tuple[str, str]]) -> str | None:
    """The markdown from the "## Exercises" heading to the next "## " heading (or the end)."""
    text = "\n\n".join(src for kind, src in cells if kind == "markdown")
    start = re.search(r"^## Exercises[ \t]*$", text, re.M)
    if start is None:
        return None
    rest = text[start.end():]
    end = re.search(r"^## ", rest, re.M)
    return rest[: end.start()] if end else rest


def split_exercises(markdown: str) -> list[Exercise]:
    """Cut the section at top-level numbered items, ignoring lines inside ``` fences."""
    exercises, fenced = [], False
    for line in markdown.splitlines(keepends=True):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = None if fenced else ITEM.match(line)
        if m:
            exercises.append(Exercise(m.group(1), line))
        elif exercises:
            exercises[-1].text += line
    for ex in exercises:
        n_hint, n_sol = ex.text.count(HINT), ex.text.count(SOLUTION)
        if n_hint != 1:
            ex.problems.append(f"exercise {ex.number} has {n_hint} Hint blocks (needs exactly one `{HINT}`)")
        if n_sol != 1:
            ex.problems.append(f"exercise {ex.number} has {n_sol} Solution blocks (needs exactly one `{SOLUTION}`)")
            continue
        body = ex.text.split(SOLUTION, 1)[1]
        if "</details>" not in body:
            ex.problems.append(f"exercise {ex.number}: its Solution block is not closed with </details>")
        body = body.split("</details>", 1)[0]
        codes = list(CODE.finditer(body))
        ex.solutions = [textwrap.dedent(m.group(1)) for m in codes]
        if not ex.solutions:
            ex.problems.append(f"exercise {ex.number}: its Solution has no ```python block")
        for k, m in enumerate(codes):
            after = body[m.end():codes[k + 1].start() if k + 1 < len(codes) else len(body)]
            out = OUTPUT.search(after)
            ex.outputs.append(textwrap.dedent(out.group(1)) if out else None)
            if out and not MODE_NAMED.search(after[:out.start()]):
                ex.problems.append(f"exercise {ex.number}: the output of solution block {k + 1} does not say which "
                                   "mode it ran in (\"quick mode\" or \"full mode\") before its ```text block")
    return exercises


def masked(text: str) -> list[str]:
    """The lines of an output with every number replaced by # and runs of spaces by one."""
    return [NUMBER.sub("#", " ".join(line.split())) for line in text.strip().splitlines() if line.strip()]


def output_mismatch(printed: str, stated: str) -> str | None:
    """None when the printed output has the stated one's lines and words (numbers may differ), else the first difference."""
    got, want = masked(printed), masked(stated)
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            return f"line {i + 1}: printed {g!r}, the notebook states {w!r}"
    if len(got) != len(want):
        return f"{len(got)} lines printed, the notebook states {len(want)}"
    return None


def parse_notebook(twin: Path) -> tuple[list[Exercise], list[str]]:
    nb = jupytext.read(twin)
    md = exercises_markdown([(c.cell_type, c.source) for c in nb.cells])
    if md is None:
        return [], [f"{twin.stem} has no '## Exercises' section"]
    exercises = split_exercises(md)
    if not exercises:
        return [], [f"{twin.stem}: no numbered exercises under '## Exercises'"]
    problems = [p for ex in exercises for p in ex.problems]
    if twin.stem in STATES_OUTPUT:
        problems += [f"exercise {ex.number}: solution block {k + 1} shows no output (a ```text block after the code, "
                     "from a real run, with the mode named)" for ex in exercises for k, out in enumerate(ex.outputs) if out is None]
    return exercises, problems


def run_solution(code: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run one solution as a learner would: a fresh interpreter in notebooks/, quick mode, this checkout's package.
    On the CPU, as the stated outputs were made ("quick mode, 2 CPU cores"), also where a GPU is present: quick mode on
    a GPU machine would still train on the GPU, and print another device."""
    env = dict(BASE_ENV, VIT_MODE="quick", MPLBACKEND="Agg", CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), BASE_ENV.get("PYTHONPATH", "")) if p))
    try:
        return subprocess.run([sys.executable, "-c", code], cwd=NB_DIR, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return subprocess.CompletedProcess(e.cmd, returncode=-1, stdout="", stderr=f"timed out after {timeout} s\n{err}")


def failures(exercises: list[Exercise], timeout: float = TIMEOUT_S, first_block: int = 1) -> list[str]:
    """What failed, each named by its exercise and solution block (numbered from `first_block`)."""
    out = []
    for ex in exercises:
        for k, code in enumerate(ex.solutions, first_block):
            res = run_solution(code, timeout)
            if res.returncode != 0:
                out.append(f"exercise {ex.number}, solution block {k}: exit code {res.returncode}\n"
                           f"--- code ---\n{code}--- stderr (last 3000 characters) ---\n{res.stderr[-3000:]}")
            elif (stated := dict(enumerate(ex.outputs, first_block)).get(k)) is not None and (why := output_mismatch(res.stdout, stated)):
                out.append(f"exercise {ex.number}, solution block {k}: its output is not the one the notebook states ({why})\n"
                           f"--- printed ---\n{res.stdout[-3000:]}")
    return out


@pytest.mark.parametrize("twin", TWINS, ids=[t.stem for t in TWINS])
def test_every_exercise_has_a_hint_and_a_solution(twin):
    _, problems = parse_notebook(twin)
    assert not problems, f"{twin.stem}:\n" + "\n".join(problems)


@pytest.mark.parametrize("twin", TWINS, ids=[t.stem for t in TWINS])
def test_every_notebook_has_solution_code(twin):
    exercises, _ = parse_notebook(twin)
    assert any(ex.solutions for ex in exercises), f"{twin.stem}: no solution code to run"


def solution_blocks() -> list:
    """One test per solution block (notebook, exercise, block), so that pytest-xdist spreads long ones over workers."""
    blocks = []
    for twin in TWINS:
        for ex in parse_notebook(twin)[0]:
            for k, code in enumerate(ex.solutions):
                one = Exercise(ex.number, ex.text, solutions=[code], outputs=ex.outputs[k:k + 1])
                blocks.append(pytest.param(one, k + 1, id=f"{twin.stem}-exercise{ex.number}-block{k + 1}"))
    return blocks


@pytest.mark.parametrize(("exercise", "block"), solution_blocks())
def test_every_solution_runs(exercise, block):
    failed = failures([exercise], first_block=block)
    assert not failed, failed[0]


# The checks themselves, on a made-up section: they must catch a missing block and a failing solution.
GOOD = """
1. **Works.** Print something.

<details><summary>Hint</summary>

Use print.

</details>
<details><summary>Solution</summary>

```python
print("ok")
```

It prints ok.

</details>
"""


def _section(body: str) -> list[tuple[str, str]]:
    return [("markdown", "# Title"), ("code", "x = 1"), ("markdown", "## Exercises\n" + body)]


def test_the_checks_accept_a_good_section():
    exercises = split_exercises(exercises_markdown(_section(GOOD)))
    assert [ex.number for ex in exercises] == ["1"] and not exercises[0].problems
    assert exercises[0].solutions == ['print("ok")\n']


def test_the_checks_catch_a_missing_block():
    no_hint = GOOD.replace(HINT, "")
    two_solutions = GOOD + GOOD.replace("1. **Works.**", "2. **Twice.**").replace(HINT, SOLUTION)
    no_code = GOOD.replace("```python", "```text")
    assert split_exercises(exercises_markdown(_section(no_hint)))[0].problems
    assert split_exercises(exercises_markdown(_section(two_solutions)))[1].problems
    assert split_exercises(exercises_markdown(_section(no_code)))[0].problems
    assert exercises_markdown([("markdown", "# no exercises here")]) is None


def test_the_checks_catch_a_failing_solution():
    failing = GOOD.replace('print("ok")', 'raise RuntimeError("broken solution")')
    exercises = split_exercises(exercises_markdown(_section(failing)))
    failed = failures(exercises, timeout=30)
    assert len(failed) == 1 and "exercise 1" in failed[0] and "broken solution" in failed[0]
    assert not failures(split_exercises(exercises_markdown(_section(GOOD))), timeout=30)


def test_going_fast_solutions_show_results_from_a_named_mode():
    """06's solutions each show what they printed in a real run (a ```text block after the code) and name the mode."""
    exercises, _ = parse_notebook(NB_DIR / "py" / "06_going_fast.py")
    assert exercises
    for ex in exercises:
        body = ex.text.split(SOLUTION, 1)[1].split("</details>", 1)[0]
        after_code = body.split("```python", 1)[1].split("```", 1)[1]  # what follows the code block
        assert "```text" in after_code, f"06, exercise {ex.number}: its solution shows no results (a ```text block after the code)"
        assert re.search(r"\b(quick|full) mode\b", after_code), f"06, exercise {ex.number}: name the mode its results come from"


STATED = GOOD.replace("It prints ok.", """Output of our run (quick mode):

```text
ok 1.5 s
```
""").replace('print("ok")', 'print("ok", 2.25, "s")')


def test_the_checks_compare_a_stated_output_but_not_its_numbers():
    exercises = split_exercises(exercises_markdown(_section(STATED)))
    assert exercises[0].outputs == ["ok 1.5 s\n"] and not exercises[0].problems
    assert not failures(exercises, timeout=30)  # other numbers, same words: accepted
    wrong = split_exercises(exercises_markdown(_section(STATED.replace("ok 1.5 s", "fine 1.5 s"))))
    failed = failures(wrong, timeout=30)
    assert len(failed) == 1 and "is not the one the notebook states" in failed[0] and "fine" in failed[0]
    no_mode = split_exercises(exercises_markdown(_section(STATED.replace("(quick mode)", "(on a laptop)"))))
    assert any("which mode" in p for p in no_mode[0].problems)
    assert output_mismatch("a 1\nb 2\n", "a 3\n") == "2 lines printed, the notebook states 1"
