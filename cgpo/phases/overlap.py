"""Phases 2-3 off the critical path: judges and reward models in a worker thread beside phase 4's passes.

The judges and reward models score a step's samples in a worker thread while the policy and reference
log-prob passes of phase 4 run in the main thread.

Verdicts and rewards are read only by the loss, so nothing in the log-prob passes waits for them; the
join comes just before the loss. What runs in the worker is CPU work that mostly leaves the GIL free: the
code judge's sandboxed subprocesses, math-verify's worker processes, HTTP judges waiting on a server,
reward-model forwards in torch kernels. Pure-Python judges (IFEval's checks) share the GIL with the
main thread's Python-side work and gain less.

The results are the same with and without overlap (``tests/trainer/test_overlap.py`` compares a step's
losses): the worker runs the same functions on the same inputs, judges and reward models draw no random
numbers, and nothing in phases 2-3 communicates across processes, so the main thread's DDP/FSDP
collectives keep their order. An exception in the worker (a judge alarm stopping the run, a reward model
that fails) is raised in the main thread at the join.

A ``concurrent.futures`` executor is the tool made for this; one worker suffices (the phases are
sequential between themselves: rewards need verdicts).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

from cgpo.metrics import PhaseTimer

T = TypeVar("T")


class Pending(Generic[T]):
    """``work()`` started now, in a worker thread or (``background=False``) right here; :meth:`result` joins.

    Args:
        work: What to run (the trainer's phases 2-3, which time themselves as ``judge`` and ``reward``).
        timer: The step's timer; the caller's time blocked in :meth:`result` is timed as ``judge_wait``.
        background: Overlap with the caller (``training.overlap_judging``); False runs ``work`` at once.
    """

    def __init__(self, work: Callable[[], T], timer: PhaseTimer, *, background: bool) -> None:
        self._timer = timer
        self._executor: ThreadPoolExecutor | None = None
        if background:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cgpo-judge")
            self._future: Future[T] = self._executor.submit(work)
        else:
            self._future = Future()
            self._future.set_result(work())

    def result(self) -> T:
        """What ``work()`` returned (or raised), waiting for the worker if it is still busy."""
        try:
            with self._timer("judge_wait"):
                return self._future.result()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
