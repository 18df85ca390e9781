"""Checks for the notebooks' "implement it" exercises, one module per paradigm file.

A notebook gives the learner a stub that raises NotImplementedError and a cell that calls a check on it, e.g.
`check_verify(my_verify)` from `minigen.exercises.speculative`. The check compares the learner's function with
the library on cases where they must agree. Until the stub is filled in, the check prints how to go on (so a
notebook runs top to bottom with the stub in place); a wrong answer raises AssertionError saying what differs;
a right one prints so and returns True. Worked solutions live in `solutions/`.
"""

from __future__ import annotations

import functools


def checked(check):
    """Turn `check(fn)`, which asserts that a learner's `fn` agrees with the library, into the function a notebook
    calls: False with a note while `fn` is still the stub, AssertionError when it is wrong, True when right."""

    @functools.wraps(check)
    def run(fn) -> bool:
        if not callable(fn):
            raise TypeError(f"{check.__name__} takes your function, got {type(fn).__name__}")
        try:
            check(fn)
        except NotImplementedError:
            print(f"{check.__name__}: not implemented yet; fill in {fn.__name__} above and run both cells again")
            return False
        print(f"{check.__name__}: {fn.__name__} agrees with the library on every case")
        return True

    return run
