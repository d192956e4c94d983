"""How many steps fit in a time budget, from measured costs.

With ``train.steps=0`` and ``train.minutes`` the trainer measures its first steps and
one validation, then fixes the step count so the whole LR schedule (warm-up, decay to
the floor) fits the budget. The count is stored in the run, so a resume is exact.
"""
from __future__ import annotations

import math

MEASURE_STEPS = 10  # steps timed for the estimate at most (fewer when the LR warm-up is shorter)
SAFETY = 0.95  # share of the remaining time that is planned for


def steps_that_fit(remaining_s: float, step_s: float, validation_s: float, val_every: int, checkpoint_s: float,
                   checkpoint_every: int, done: int = 0) -> int:
    """The largest total step count N (>= done + 1) whose remaining steps, validations and
    checkpoints take at most ``SAFETY * remaining_s``, the last step validated and checkpointed."""
    budget = SAFETY * remaining_s

    def cost(total: int) -> float:
        todo = total - done
        validations = total // val_every - done // val_every + (total % val_every != 0)
        checkpoints = total // checkpoint_every - done // checkpoint_every + (total % checkpoint_every != 0)
        return todo * step_s + validations * validation_s + checkpoints * checkpoint_s

    lo, hi = done + 1, done + 1 + max(1, math.ceil(budget / max(step_s, 1e-9)))
    if cost(lo) > budget:
        return lo
    while lo < hi:  # cost grows with N: binary search for the last N that fits
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid) <= budget else (lo, mid - 1)
    return lo
