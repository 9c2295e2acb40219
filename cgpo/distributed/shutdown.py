"""Ending a distributed process cleanly: leave the process group, then exit without interpreter finalization.

Why not simply return from ``main``: after ``destroy_process_group`` the gloo process group of an FSDP2 run
stays alive, held by the DeviceMesh (``_pg_registry``) that outlives the model: no Python object refers to
the mesh once the model is gone, so something outside ``gc``'s view keeps it (DTensor's caches, probably). Its
two ``pt_gloo_runloop`` worker threads and the ``gloo_tcp_loop`` thread still run after the group is destroyed.
Its C++ threads are then torn down during interpreter finalization, and now and then that aborts the process
("terminate called without an active exception", SIGABRT, no Python frame on the stack), so a run that finished
its work and wrote its checkpoint exits with -6 and the launcher reports a failure. Reproduced with torch 2.13
and nothing of cgpo's (``fully_shard`` on two Linear layers, three AdamW steps, gloo, two processes): 2 of 48
runs; ``tests/trainer/test_shutdown.py`` checks that the threads outlive the group, so it says when a torch
release frees them. Ending with ``os._exit`` after the output is flushed skips that teardown.

Only the process entry points (``cgpo`` and ``python -m cgpo``) end this way: :func:`cgpo.cli.main` itself
returns, because studies call it in-process (:func:`cgpo.cli.run_logged`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import NoReturn

_left_a_process_group = False


def leave_process_group() -> None:
    """``destroy_process_group()`` when this process is in one; remembered for :func:`exit_process`."""
    global _left_a_process_group
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
        _left_a_process_group = True


def left_a_process_group() -> bool:
    """True once :func:`leave_process_group` destroyed a process group in this process."""
    return _left_a_process_group


def exit_process(status: int) -> NoReturn:
    """End the process with ``status``.

    After a distributed run by ``os._exit`` (see the module docstring), once stdout, stderr and logging are
    flushed; otherwise by ``sys.exit``.
    """
    if not _left_a_process_group:
        sys.exit(status)
    logging.shutdown()  # flushes and closes every handler (files included), as interpreter exit would
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken pipe: nothing more can reach it
            stream.flush()
    os._exit(status)
