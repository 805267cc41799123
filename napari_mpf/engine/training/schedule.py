"""How many steps a run plans (fixed, or fitted to a time budget) and its learning-rate schedule."""

from __future__ import annotations

import math
import time
from collections import deque

__all__ = ["StepPlanner", "cosine_schedule"]


class StepPlanner:
    """The planned number of steps: fixed, or fitted to a time budget counted from the end of the
    first step (which may include Numba's compilation) from the recent step times."""

    SKIP, WINDOW = 3, 50

    def __init__(self, max_steps: int, seconds: float | None) -> None:
        self.max_steps, self.seconds, self.start = max_steps, seconds, 0.0
        self.planned = max_steps
        self.stamps: deque[float] = deque(maxlen=self.WINDOW + 1)

    def update(self, step: int) -> None:
        if self.seconds is None:
            return
        now = time.perf_counter()
        if step == 1:  # the clock starts once the kernels are compiled
            self.start = now
            return
        left = self.seconds - (now - self.start)
        if left <= 0:
            self.planned = step
            return
        if step > self.SKIP:
            self.stamps.append(now)
        if len(self.stamps) > 3:
            per_step = (self.stamps[-1] - self.stamps[0]) / (len(self.stamps) - 1)
            self.planned = int(min(self.max_steps, max(step + 1, step + left / per_step)))


def cosine_schedule(step: int, steps: int) -> float:
    """The cosine decay: 1 at the first step, 0.1 at the last."""
    if steps <= 1:
        return 1.0
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - 1) / (steps - 1)))
