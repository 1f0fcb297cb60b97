"""What a trainer does with a step whose loss or gradient norm is NaN or infinite (option ``nonfinite``).

A non-finite loss or gradient (too high a learning rate, an overflow in half precision, a bad row)
makes AdamW write NaN into every weight it touches, and the run would go on to save a model of NaN
and report success. The check runs on every optimizer step after the gradients are complete
(summed over processes) and *before* the optimizer steps, on every process alike:

- ``stop`` (default): a one-line UserError naming the step and what was non-finite; the run ends
  (exit 2) without writing anything new: no checkpoint of that step, no final model, so the last
  good checkpoint stays the one a rerun resumes from;
- ``skip``: that update is dropped (gradients cleared, weights and optimizer state untouched) and
  counted (metric ``nonfinite_skipped``); `MAX_CONSECUTIVE` skipped steps in a row stop the run as above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rlaif.errors import UserError

MAX_CONSECUTIVE = 3


class NonFiniteError(UserError):
    """A step's loss or gradient norm was NaN or infinite (see the module docstring)."""


@dataclass
class NonFiniteGuard:
    """Per-run state of the check: the mode, updates skipped in all and in a row."""

    mode: str = "stop"  # "stop" | "skip"
    skipped: int = 0
    in_a_row: int = 0

    def allows(self, step: str, loss: float, grad_norm: float | None) -> bool:
        """True when the update may be applied; False (skip) or NonFiniteError (stop) otherwise.
        ``step`` names the step in messages ("step 12", "step 3, update 2")."""
        bad = [name for name, value in (("loss", loss), ("gradient norm", grad_norm))
               if value is not None and not math.isfinite(value)]
        if not bad:
            self.in_a_row = 0
            return True
        what = f"non-finite {' and '.join(bad)} ({loss if 'loss' in bad else grad_norm})"
        if self.mode != "skip":
            raise NonFiniteError(f"{step}: {what}; stopped before the update, nothing new saved (lower lr, or "
                                 f"set nonfinite=skip to drop such updates)")
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row >= MAX_CONSECUTIVE:
            raise NonFiniteError(f"{step}: {what} for {self.in_a_row} updates in a row (nonfinite=skip); stopped, "
                                 f"nothing new saved (lower lr)")
        return False
