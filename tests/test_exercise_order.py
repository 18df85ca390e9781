"""An implement-it exercise comes before the library code that answers it (course review, item 1).

A notebook that calls a check from minigen.exercises on a learner's stub (a function whose body raises
NotImplementedError) must not, in any code cell before the stub, show the library functions the check compares
with (its `compares_with`) through `viz.show_source(X)`, X one of them or a class holding one, nor hold a copy
of one's body: three consecutive lines of it, or one long line almost word for word. Each notebook's findings are
printed, so a failure says what was found where.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import inspect
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import committed_notebook

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
RUN = 3  # consecutive lines of a compared function's body that make a copy
# or one line this long (characters) this similar (difflib ratio): notebook 05 once held the library's line
# `before = 0 if t == num_iter - 1 else max(min(masked_count(n_tokens, t, num_iter, schedule), before - 1), 0)`
# as `keep_masked = 0 if t == num_iter - 1 else max(min(masked_count(L, t, num_iter), still - 1), 0)`: ratio 0.80
LONG, SIMILAR = 50, 0.75


@dataclass
class Exercise:
    check: str  # the check's name, e.g. "check_verify"
    compares_with: tuple  # the library functions the check compares with
    stub: str  # the learner's function, e.g. "verify"
    stub_cell: int  # the notebook cell that defines the stub
    check_cell: int  # the notebook cell that calls the check on it


def code_cells(path: Path) -> list[tuple[int, str]]:
    """(index among all cells, source) of every code cell of the notebook at `path`."""
    cells = committed_notebook(path)["cells"]  # as committed: not a learner's answers (conftest.committed_text)
    return [(i, "".join(c["source"])) for i, c in enumerate(cells) if c["cell_type"] == "code"]


def _parse(source: str) -> ast.Module | None:
    """The cell as Python, its IPython magics and shell lines blanked; None if it still does not parse."""
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def _note_imports(tree: ast.Module, names: dict[str, str]) -> None:
    """Add what the cell imports to `names`: the name bound -> the dotted path it stands for."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                names[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"


def _resolve(dotted: str):
    """The object a dotted path names (its longest importable prefix, then attributes), or None."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except Exception:  # not a module (ImportError), or one that fails to import
            continue
        for part in parts[k:]:
            obj = getattr(obj, part, None)
            if obj is None:
                return None
        return obj
    return None


def _stubs(tree: ast.Module) -> set[str]:
    """Names of the functions the cell defines whose body raises NotImplementedError: the learner's stubs."""

    def raises_not_implemented(node):
        exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"

    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        and any(isinstance(n, ast.Raise) and n.exc is not None and raises_not_implemented(n) for n in ast.walk(node))
    }


def _calls(tree: ast.Module, name: str) -> list[ast.Call]:
    """The calls in the cell of a function called `name` (plainly or as an attribute, e.g. viz.show_source)."""
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Name) and node.func.id == name)
            or (isinstance(node.func, ast.Attribute) and node.func.attr == name)
        )
    ]


def find_exercises(cells: list[tuple[int, str]]) -> list[Exercise]:
    """Every check from minigen.exercises that a cell calls on a stub defined in that cell or an earlier one."""
    names, stubs, found = {}, {}, []
    for index, source in cells:
        tree = _parse(source)
        if tree is None:
            continue
        _note_imports(tree, names)
        stubs.update(dict.fromkeys(_stubs(tree), index))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args):
                continue
            check, arg = node.func.id, node.args[0]
            if not (check.startswith("check_") and names.get(check, "").startswith("minigen.exercises.")):
                continue
            if isinstance(arg, ast.Name) and arg.id in stubs:
                compared = getattr(_resolve(names[check]), "compares_with", ())
                found.append(Exercise(check, tuple(compared), arg.id, stubs[arg.id], index))
    return found


def _by_name(text: str, function) -> bool:
    """By name alone: whether a dotted expression such as `S.verify`, `RasterGPT.sample_tokens` or `GatedLayer`
    ends with the function's qualified name or with a class that holds it, or, as `model.sample_tokens` (a
    method reached through an object), with the function's name."""
    tail, qualname = text.split("."), function.__qualname__.split(".")
    if len(tail) > 1 and tail[-1] == function.__name__:
        return True
    return any(tail[-k:] == qualname[:k] for k in range(1, len(qualname) + 1))


def shows(obj, text: str, function) -> bool:
    """Whether `viz.show_source(obj)` (obj None where the expression `text` did not resolve) shows `function`:
    obj is it, a class that holds it, or its module."""
    if obj is None:
        return _by_name(text, function)
    if obj is function:
        return True
    if inspect.isclass(obj):
        return function.__module__ == obj.__module__ and function.__qualname__.startswith(obj.__qualname__ + ".")
    return inspect.ismodule(obj) and function.__module__ == obj.__name__


def _normalised(lines) -> list[str]:
    """Code lines without comments and with single spaces; blank lines, brackets alone and other short lines
    (under 20 characters: `else:`, `return x`) dropped, as they are no sign of a copy."""
    out = []
    for line in lines:
        line = " ".join(re.sub(r"(^|\s)#.*$", "", line).split())
        if len(line) >= 20:
            out.append(line)
    return out


def body_lines(function) -> list[str]:
    """The normalised lines of a function's body, its docstring left out."""
    source = textwrap.dedent(inspect.getsource(function))
    definition = next(n for n in ast.parse(source).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    body = definition.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:] or body  # the docstring
    return _normalised(source.splitlines()[body[0].lineno - 1 : definition.end_lineno])


def copied(source: str, function) -> str | None:
    """A copy of `function`'s body in a cell: RUN consecutive lines of it, or one LONG line almost word for word;
    returns the first copied line, or None."""
    body, cell = body_lines(function), _normalised(source.splitlines())
    runs = {tuple(body[i : i + RUN]) for i in range(len(body) - RUN + 1)}
    for i in range(len(cell) - RUN + 1):
        if tuple(cell[i : i + RUN]) in runs:
            return cell[i]
    for line in (b for b in body if len(b) >= LONG):
        for other in cell:
            if difflib.SequenceMatcher(None, line, other).ratio() >= SIMILAR:
                return other
    return None


def giveaways(cells: list[tuple[int, str]]) -> tuple[list[Exercise], list[str]]:
    """The notebook's exercises, and one line for each cell before an exercise that gives its answer away."""
    exercises, problems = find_exercises(cells), []
    for exercise in exercises:
        names = {}
        for index, source in cells:
            if index >= exercise.stub_cell:
                break
            tree = _parse(source)
            if tree is not None:
                _note_imports(tree, names)
                for call in _calls(tree, "show_source"):
                    if not call.args:
                        continue
                    text = ast.unparse(call.args[0])
                    head, _, rest = text.partition(".")
                    obj = _resolve(names[head] + (f".{rest}" if rest else "")) if head in names else None
                    for function in exercise.compares_with:
                        if shows(obj, text, function):
                            problems.append(
                                f"cell {index} shows {text} (holding {function.__module__}.{function.__qualname__}, "
                                f"which {exercise.check} compares with) before the exercise at cell "
                                f"{exercise.stub_cell}"
                            )
            for function in exercise.compares_with:
                line = copied(source, function)
                if line:
                    problems.append(
                        f"cell {index} copies {function.__module__}.{function.__qualname__} ({exercise.check} compares "
                        f"with it) before the exercise at cell {exercise.stub_cell}: {line!r}"
                    )
    return exercises, problems


# --- the detector on small made-up notebooks ---

IMPORTS = "from minigen import viz\nfrom minigen import speculative as S\nfrom minigen.pixel_ar import GatedLayer"
STUB = "def verify(p, q, drafts, dice):\n    '''Your verify.'''\n    raise NotImplementedError  # your code here"
CHECK = "from minigen.exercises.speculative import check_verify\n\ncheck_verify(verify);"


def _cells(*sources) -> list[tuple[int, str]]:
    return list(enumerate(sources))


def test_the_checks_name_what_they_compare_with():
    from minigen import speculative
    from minigen.exercises.pixel_ar import check_gated_layer
    from minigen.exercises.speculative import check_verify
    from minigen.pixel_ar import GatedLayer

    assert check_verify.compares_with == (speculative.verify,)
    assert check_gated_layer.compares_with == (GatedLayer.forward,)


def test_an_exercise_after_its_answer_is_found():
    exercises, problems = giveaways(_cells(IMPORTS, "viz.show_source(S.verify)", STUB, CHECK))
    assert [(e.check, e.stub, e.stub_cell, e.check_cell) for e in exercises] == [("check_verify", "verify", 2, 3)]
    assert len(problems) == 1 and "cell 1 shows S.verify" in problems[0], problems


def test_an_answer_after_its_exercise_is_fine():
    assert giveaways(_cells(IMPORTS, STUB, CHECK, "viz.show_source(S.verify)"))[1] == []
    assert giveaways(_cells(IMPORTS, "viz.show_source(S.Dice)", STUB, CHECK))[1] == []  # another object


def test_a_class_holding_the_compared_method_gives_it_away():
    stub = "def gated_layer(layer, v, h, labels):\n    raise NotImplementedError"
    check = "from minigen.exercises.pixel_ar import check_gated_layer\ncheck_gated_layer(gated_layer)"
    assert len(giveaways(_cells(IMPORTS, "viz.show_source(GatedLayer)", stub, check))[1]) == 1
    # an unresolved name is matched by its text: `RasterGPT` was never imported here
    stub = "def sample_tokens(model, labels, *, temperature=1.0, generator=None):\n    raise NotImplementedError"
    check = "from minigen.exercises.token_ar import check_sample_tokens\ncheck_sample_tokens(sample_tokens)"
    for shown in ("RasterGPT.sample_tokens", "RasterGPT", "model.sample_tokens"):
        problems = giveaways(_cells(IMPORTS, f"viz.show_source({shown})", stub, check))[1]
        assert len(problems) == 1, (shown, problems)
    assert giveaways(_cells(IMPORTS, "viz.show_source(RasterGPT.nll)", stub, check))[1] == []


def test_a_copied_body_gives_it_away():
    from minigen import speculative

    source = textwrap.dedent(inspect.getsource(speculative.verify))
    first = ast.parse(source).body[0].body[1].lineno  # the body's first line after the docstring
    copy = textwrap.dedent("\n".join(source.splitlines()[first - 1 : first + 3]))  # four lines, as a cell holds them
    problems = giveaways(_cells(IMPORTS, "import torch\n\n" + copy, STUB, CHECK))[1]
    assert len(problems) == 1 and "copies minigen.speculative.verify" in problems[0], problems
    assert giveaways(_cells(IMPORTS, STUB, CHECK, copy))[1] == []  # after the exercise: fine


def test_a_near_copy_of_one_long_line_gives_it_away():
    from minigen.masked_ar import masked_count  # noqa: F401 (the notebook's import below)

    stub = "def masked_counts(n_tokens, num_iter):\n    raise NotImplementedError"
    check = "from minigen.exercises.masked_ar import check_masked_counts\ncheck_masked_counts(masked_counts)"
    line = "kept = [int(math.floor(n_tokens * SCHEDULES[schedule]((s + 1) / T) + 1e-9)) for s in range(T)]"
    assert giveaways(_cells("import math", "n_tokens, schedule, T = 49, 'cosine', 8\n" + line, stub, check))[1]
    # notebook 05's one-time copy of the schedule's rule inside its own decoding pass, names changed
    line = "keep_masked = 0 if t == num_iter - 1 else max(min(masked_count(L, t, num_iter), still - 1), 0)"
    problems = giveaways(_cells("import math", f"def one_pass(L, t, num_iter, still):\n    {line}", stub, check))[1]
    assert len(problems) == 1 and "copies minigen.masked_ar.masked_schedule" in problems[0], problems
    assert not giveaways(_cells("import math", "print(math.pi)", stub, check))[1]


# --- the notebooks ---


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_notebook_gives_an_exercise_away_before_it(path):
    exercises, problems = giveaways(code_cells(path))
    print(f"{path.name}: {len(exercises)} exercise(s)")
    for e in exercises:
        compared = ", ".join(f"{f.__module__}.{f.__qualname__}" for f in e.compares_with) or "nothing"
        print(f"  {e.check}({e.stub}) at cell {e.check_cell}, stub at cell {e.stub_cell}, compares with {compared}")
        assert e.compares_with, f"{e.check} names no library function in compares_with"
    for problem in problems:
        print(f"  {problem}")
    assert not problems, f"{path.name} gives an exercise's answer away:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_exercises_link_their_worked_solutions(path):
    """A learner stuck on an exercise finds the solutions from the exercises themselves, on GitHub, in JupyterLab
    (rooted at the repository) and on the website: a relative link to an existing solutions notebook."""
    cells = [c for c in committed_notebook(path)["cells"] if c["cell_type"] == "markdown"]
    exercises = [c for c in cells if "".join(c["source"]).startswith("## Exercises")]
    assert len(exercises) == 1, f"{path.name}: {len(exercises)} '## Exercises' cells"
    links = re.findall(r"\]\((\.\./solutions/[^)]+\.ipynb)\)", "".join(exercises[0]["source"]))
    assert links == [f"../solutions/{path.name}"], f"{path.name}: links {links}"
    assert (path.parent / links[0]).resolve().is_file(), f"{path.name}: {links[0]} does not exist"
