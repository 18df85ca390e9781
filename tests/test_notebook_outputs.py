"""The committed notebooks as a learner first meets them: on GitHub or untrusted in JupyterLab, without a kernel.

Their stored outputs must come from a real cpu or gpu run and read well: no error, no warning, no first frame
of a progress bar (which reads as "training never ran"), no widget repr or stray `(None, None)` in place of a
figure. And every notebook carries the course skeleton: objectives, prerequisites and times at the top, what
you learned, exercises with a hint, an expected outcome and a cost each, and worked solutions in solutions/.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import committed_notebook, committed_text

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PARADIGMS = [nb for nb in NOTEBOOKS if int(nb.name[:2]) not in (0, 9, 10)]  # 09, 10: comparison, speed
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
# every notebook and every worked solution stores a real run's outputs (a solution's answers a measurement on the
# page; each also runs in CI in the smoke preset)
STORED = NOTEBOOKS + SOLUTIONS


def stored_id(path):
    return f"{path.parent.name}/{path.stem}"


FIRST_FRAME = re.compile(r"(^|\s)0%\||(^|\s)0/\d+ \[")  # tqdm's "  0%|" or " 0/3000 ["
WIDGET_REPR = re.compile(r"^(interactive|VBox|HBox|IntSlider|FloatSlider)\(children=|^\w*Slider\(value=")


def load(path):
    return committed_notebook(path)  # as committed: not a learner's half-run copy (see conftest.committed_text)


def texts(output):
    """Every piece of text an output shows without a kernel."""
    if output["output_type"] == "stream":
        yield output["name"], "".join(output["text"])
    elif output["output_type"] in ("display_data", "execute_result"):
        plain = output.get("data", {}).get("text/plain")
        if plain is not None:
            yield "text/plain", "".join(plain)


def markdown(nb):
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed: the tests read the files on disk")
def test_notebooks_are_read_as_committed_not_as_a_learner_left_them(tmp_path, tmp_path_factory, monkeypatch):
    for variable in ("GIT_DIR", "GIT_INDEX_FILE", "GIT_WORK_TREE"):  # set inside a git hook: not this repository's
        monkeypatch.delenv(variable, raising=False)
    git = lambda *args: subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, timeout=60)
    run = lambda preset: json.dumps({"cells": [{"outputs": [{"output_type": "stream", "text": f"preset: {preset}"}]}]})
    path = tmp_path / "notebooks" / "03_token_ar.ipynb"
    path.parent.mkdir()
    path.write_text(run("cpu | device: cpu (2 cores, 2 threads) | 28 s"))
    git("init", "-q")
    git("add", "notebooks/03_token_ar.ipynb")
    committed = path.read_text()
    path.write_text(json.dumps({"cells": [{"outputs": []}]}))  # JupyterLab saved a half-run copy
    assert committed_text(path) == committed
    path.write_text(run("gpu | device: cuda (NVIDIA H100) | 90 s"))  # a maintainer's new run, staged to be tested
    git("add", "notebooks/03_token_ar.ipynb")
    assert committed_text(path) == path.read_text() != committed
    new = path.with_name("14_new.ipynb")  # not added yet: what will be committed is the file itself
    new.write_text(run("cpu"))
    assert committed_text(new) == run("cpu")
    elsewhere = tmp_path_factory.mktemp("not-a-checkout") / "03_token_ar.ipynb"  # a download, no git
    elsewhere.write_text(run("cpu"))
    assert committed_text(elsewhere) == run("cpu")
    monkeypatch.setenv("PATH", str(tmp_path / "no-such-folder"))  # no git program at all
    assert committed_text(path) == path.read_text()


def test_the_notebooks_are_numbered_without_gaps():
    assert [nb.name[:2] for nb in NOTEBOOKS] == [f"{i:02d}" for i in range(14)]


@pytest.mark.parametrize("path", STORED, ids=stored_id)
def test_stored_outputs_read_well_without_a_kernel(path):
    nb = load(path)
    problems = []
    for i, cell in enumerate(nb["cells"]):
        for output in cell.get("outputs", []):
            if output["output_type"] == "error":
                problems.append(f"cell {i}: an error ({output.get('ename')})")
            for kind, text in texts(output):
                if kind == "stderr" and re.search(r"Warning|warn\(", text):
                    problems.append(f"cell {i}: a warning: {text.strip()[:120]}")
                if FIRST_FRAME.search(text):
                    problems.append(f"cell {i}: a progress bar's first frame: {text.strip()[:80]}")
                if WIDGET_REPR.search(text.strip()):
                    problems.append(f"cell {i}: a widget's repr instead of a fallback: {text.strip()[:80]}")
                if text.strip() == "(None, None)":
                    problems.append(f"cell {i}: a stray (None, None)")
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", STORED, ids=stored_id)
def test_outputs_come_from_a_real_run_and_say_which(path):
    nb = load(path)
    lines = [
        text
        for cell in nb["cells"]
        for output in cell.get("outputs", [])
        for _, text in texts(output)
        if text.startswith("preset: ")
    ]
    assert lines, f"{path.name} has no stored 'preset: ...' line (was it committed without outputs?)"
    assert not lines[-1].startswith("preset: smoke"), f"{path.name} carries smoke outputs: {lines[-1].strip()}"
    run = [c for c in nb["cells"] if c["cell_type"] == "code" and c["metadata"].get("minigen") != "stamp"]
    assert all(c.get("execution_count") for c in run), "unexecuted cells"  # a release's install cell never runs here


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_kernelspec_is_what_jupyterlab_writes(path):
    # anything else is rewritten on open, so a fresh clone would show every notebook as modified
    assert load(path)["metadata"]["kernelspec"] == {
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "name": "python3",
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_header_and_footer(path):
    text = markdown(load(path))
    for needle in ("**Objectives", "**Prerequisites", "**Time", "## What you learned", "## Exercises"):
        assert needle in text, f"{path.name} lacks {needle}"
    assert not re.search(r"SMOKE_S|CPU_SHIPPED|CPU_TRAIN", text), f"{path.name}: a time was never filled in"
    trains_nothing = path.name.startswith(("08", "09", "10"))
    assert "MINIGEN_TRAIN=1" in text or trains_nothing, f"{path.name}: how to train from scratch"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_exercise_has_a_hint_an_expected_outcome_and_a_cost(path):
    text = markdown(load(path))
    exercises = text[text.index("## Exercises") :].split("\n## ")[0]
    items = re.split(r"\n(?=\d+\. )", exercises)[1:]
    assert len(items) == 5, f"{path.name} has {len(items)} exercises, not 5"
    for item in items:
        for needle in ("*Hint:*", "*Expected:*", "*Cost:*"):
            assert needle in item, f"{path.name}, exercise {item[:40]!r}: no {needle}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_its_worked_solutions(path):
    solution = ROOT / "solutions" / path.name
    assert solution.exists(), f"no solutions/{path.name}"
    text = markdown(load(solution))
    for k in range(1, 6):
        assert re.search(rf"^## Exercise {k}\b", text, re.M), f"solutions/{path.name} does not solve exercise {k}"


@pytest.mark.parametrize("path", PARADIGMS, ids=lambda p: p.stem)
def test_each_paradigm_has_an_implement_it_stub_and_its_check(path):
    code = [("".join(c["source"]), c.get("outputs", [])) for c in load(path)["cells"] if c["cell_type"] == "code"]
    stubs = [i for i, (src, _) in enumerate(code) if "raise NotImplementedError" in src]
    assert stubs, f"{path.name} has no implement-it stub"
    check = code[stubs[0] + 1][0] if stubs[0] + 1 < len(code) else ""
    assert re.search(r"\bcheck_\w+\(", check), f"{path.name}: the cell after the stub must call its check"
