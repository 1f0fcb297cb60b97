"""One-step off-policy generation (``async_generation``): the next step's rollouts are sampled
on a background thread while the trainer updates on the current step's.

Timeline of step t: take batch t (sampled during step t-1, with the weights the engine held then:
those after step t-2's update) -> start sampling batch t+1 with the weights the engine holds now
(after step t-1's update) -> update on batch t -> wait for batch t+1 -> sync the new weights into
the engine. So every batch is sampled from the weights one update behind the ones it is trained
from (staleness exactly one step), the engine's weights never change while it samples, and the
rollout seed of batch t is still stable_seed(seed, "rollout", t). The staleness is corrected by the
importance weights of mismatch.py (behaviour = the engine's log-probs). The first step of a run
(or of a resume) samples in the foreground: it has no stale batch.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable


class Ahead:
    """Samples step s + 1 in the background while step s trains; ``sample(step)`` does one step's
    sampling and rewards."""

    def __init__(self, sample: Callable[[int], Any]) -> None:
        self.sample = sample
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlaif-rollouts")
        self.pending: tuple[int, Future] | None = None

    def take(self, step: int) -> Any:
        """Step ``step``'s samples: the background ones if they were started, else sampled now."""
        if self.pending is not None and self.pending[0] == step:
            future, self.pending = self.pending[1], None
            return future.result()
        self.wait()
        return self.sample(step)

    def start(self, step: int) -> None:
        """Begin sampling step ``step`` in the background (with the engine's current weights)."""
        self.wait()
        self.pending = (step, self.pool.submit(self.sample, step))

    def wait(self) -> None:
        """Block until the background sampling (if any) is done, so the engine's weights may change;
        its result (or error) stays for `take`."""
        if self.pending is not None:
            self.pending[1].exception()

    def close(self) -> None:
        """Finish the background sampling and stop the thread."""
        self.wait()
        self.pool.shutdown(wait=True)
