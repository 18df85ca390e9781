"""Checks for the notebooks' "implement it" exercises, one module per paradigm file.

A notebook gives the learner a stub that raises NotImplementedError and a cell that calls a check on it, e.g.
`check_verify(my_verify)` from `minigen.exercises.speculative`. The check compares the learner's function with
the library on cases where they must agree. Until the stub is filled in, the check prints how to go on (so a
notebook runs top to bottom with the stub in place); a wrong answer raises ExerciseFailed (an AssertionError)
saying what differs, which Jupyter shows as that message alone, without the checker's traceback; a right one
prints so and returns True. Worked solutions live in `solutions/`.

Each check names, in `check.compares_with`, the library functions it compares the learner's answer with: a
notebook must not show those (nor copy their bodies) before the exercise (tests/test_exercise_order.py).
"""

from __future__ import annotations

import functools


class ExerciseFailed(AssertionError):
    """A check's verdict on a wrong answer. IPython shows what `_render_traceback_` returns instead of the
    traceback, so a notebook cell shows the message alone: the checker's own frames would bury it."""

    def _render_traceback_(self) -> list[str]:
        first, *rest = str(self).splitlines() or [""]
        return [f"{type(self).__name__}: {first}", *rest]


def checked(check=None, *, compares_with=()):
    """Turn `check(fn)`, which asserts that a learner's `fn` agrees with the library, into the function a notebook
    calls: False with a note while `fn` is still the stub, ExerciseFailed when it is wrong, True when right.

    Whatever goes wrong becomes one ExerciseFailed that says what the learner's function did: an exception it
    raised, or an answer the check could not use (None from a forgotten `return`, a tuple of the wrong length,
    None inside a tuple), with what was expected. Use as `@checked` or `@checked(compares_with=(f, ...))`, with
    the library functions the check compares against (kept as the check's `compares_with`)."""
    if check is None:
        return functools.partial(checked, compares_with=compares_with)

    @functools.wraps(check)
    def run(fn) -> bool:
        __tracebackhide__ = True  # pytest and IPython show the message, not the checker's frames
        if not callable(fn):
            raise TypeError(f"{check.__name__} takes your function, got {type(fn).__name__}")
        calls = []

        def recorded(*args, **kwargs):
            calls.append(None)  # a call that has not returned yet
            out = fn(*args, **kwargs)
            calls[-1] = ("returned", out)
            return out

        recorded.__name__ = getattr(fn, "__name__", "your function")
        try:
            check(recorded)
        except NotImplementedError:
            print(f"{check.__name__}: not implemented yet; fill in {recorded.__name__} above and run both cells again")
            return False
        except AssertionError as err:
            answer = calls[-1][1] if calls and calls[-1] is not None else "not None"
            if answer is None or (isinstance(answer, tuple) and None in answer):
                raise ExerciseFailed(
                    f"{err} ({recorded.__name__} returned {answer!r}: did you forget `return`?)"
                ) from None
            raise ExerciseFailed(str(err) or f"{recorded.__name__} disagrees with the library") from None
        except Exception as err:
            raise ExerciseFailed(_what_went_wrong(recorded.__name__, calls, err, check)) from None
        print(f"{check.__name__}: {recorded.__name__} agrees with the library on every case")
        return True

    run.compares_with = tuple(compares_with)
    return run


def _what_went_wrong(name: str, calls: list, err: Exception, check) -> str:
    """One message for an exception met while checking `name`: raised by it, or by the check on its answer."""
    expected = " ".join((check.__doc__ or "").strip().split("\n\n")[0].split())
    if calls and calls[-1] is None:  # the learner's function itself raised
        return f"{name} raised {type(err).__name__}: {err}. Expected: {expected}"
    answer = calls[-1][1] if calls else None
    shown = repr(answer)
    shown = shown if len(shown) <= 200 else shown[:200] + " ..."
    hint = " (did you forget `return`?)" if _holds_none(answer) else ""
    return (
        f"{name} returned {shown}{hint}, which the check cannot use ({type(err).__name__}: {err}). Expected: {expected}"
    )


def _holds_none(answer) -> bool:
    """None, or a tuple with None in it: what a function that forgot a `return` gives back."""
    return answer is None or (isinstance(answer, tuple) and any(a is None for a in answer))
