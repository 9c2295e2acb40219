"""Sharded checkpoints of an FSDP run: every process writes its own shards with torch.distributed.checkpoint.

Layout of ``OUTPUT_DIR/checkpoints/step-N/`` for an FSDP run (the rest as in :mod:`cgpo.checkpoint`)::

    sharded/.metadata        DCP's index: every tensor's global shape and which file holds which chunk
    sharded/__<rank>_0.distcp  process <rank>'s shards of the policy weights and of its AdamW state
    scheduler.pt, rng-<rank>.pt, scorers-<rank>.json, trainer_state.json, manifest.json

The files go into the same staging folder as every checkpoint (``.step-N.tmp``, renamed to ``step-N`` by
process 0 once the manifest over *all* files, shards included, is written), so a save killed at any point
never leaves a folder that looks complete, and a truncated shard is caught by the manifest before a resume.

The state dicts are DCP's own (``get_state_dict`` / ``set_state_dict``): parameter names (FQNs) as keys,
the optimizer state keyed by parameter name, not position. DCP reshards on load, so a checkpoint written
by W processes loads into any number of processes, also into a plain unsharded model in one process.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cgpo import checkpoint as ckpt

SHARDED_DIR = "sharded"
#: ``trainer_state.json["format"]`` of a sharded checkpoint (absent: the gathered ``policy/`` + ``optimizer.pt``).
FORMAT = "dcp"


def is_sharded_checkpoint(state: Mapping[str, Any]) -> bool:
    """Whether the checkpoint whose ``trainer_state.json`` is ``state`` holds DCP shards."""
    return state.get("format") == FORMAT


@contextlib.contextmanager
def _single_process_is_intended() -> Iterator[None]:
    """DCP warns on every call without a process group; one process (a plain run) is a supported case here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _state_dicts(model: Any, optimizer: Any) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


def write_shards(staging: Path, model: Any, optimizer: Any) -> None:
    """Every process writes its shards of the policy and AdamW state into ``staging/sharded`` (collective).

    Args:
        staging: The checkpoint's staging folder (on a file system every process sees).
        model: The unwrapped policy (sharded by :mod:`cgpo.distributed.fsdp`).
        optimizer: The torch optimizer (not accelerate's wrapper).
    """
    from torch.distributed.checkpoint.state_dict_saver import save

    target = staging / SHARDED_DIR
    from torch.distributed.checkpoint.api import CheckpointException

    # No removal of the staging folder here on a failure: other processes may still write into it; the
    # trainer's agreement on write failures removes it once every process has reported.
    try:
        with ckpt._write_errors_named(target), _single_process_is_intended():
            save(_state_dicts(model, optimizer), checkpoint_id=str(target))
    except CheckpointException as exc:  # DCP gathers every process's failure and raises it on all of them
        _raise_own_write_error(target, exc)


def _raise_own_write_error(target: Path, exc: Any) -> None:
    """This process's I/O failure as a one-line ``CheckpointWriteError``; return if only others failed.

    The trainer's agreement on write failures then stops every process with the failing one's line, as for
    any other checkpoint file. A failure that is not an I/O error (a bug) is raised as it is, everywhere.
    """
    import torch.distributed as dist

    causes = {rank: ckpt._os_error_of(error) for rank, (error, _) in exc.failures.items()}
    if any(cause is None for cause in causes.values()):
        raise exc
    own = causes.get(dist.get_rank() if dist.is_initialized() else 0)
    if own is None:
        return
    hint = " (the disk is full or a file size limit was reached)" if own.errno in (
        errno.ENOSPC, errno.EFBIG, errno.EDQUOT) else ""  # fmt: skip
    raise ckpt.CheckpointWriteError(f"cannot write {target}: {own.strerror or own}{hint}") from exc


def write_main_files(staging: Path, *, scheduler: Any, state: Mapping[str, Any]) -> None:
    """Process 0's part: the scheduler and ``trainer_state.json`` (written last: it marks the folder complete)."""
    with ckpt._staging_removed_on_failure(staging):
        ckpt.torch_save(scheduler.state_dict(), staging / "scheduler.pt")
        tmp = staging / (ckpt.STATE_FILE + ".tmp")
        with ckpt._write_errors_named(tmp):
            tmp.write_text(json.dumps({**state, "format": FORMAT}, indent=1), encoding="utf-8")
        os.replace(tmp, staging / ckpt.STATE_FILE)


def load_shards(folder: Path, model: Any, optimizer: Any) -> None:
    """Load the weights and AdamW state of ``folder/sharded`` into this process's model and optimizer.

    Works for any number of processes (DCP reads the chunks that overlap each process's shards) and for an
    unsharded model in a single process (DCP's no-process-group mode).
    """
    from torch.distributed.checkpoint.state_dict import set_state_dict
    from torch.distributed.checkpoint.state_dict_loader import load

    state = _state_dicts(model, optimizer)
    with _single_process_is_intended():
        load(state, checkpoint_id=str(folder / SHARDED_DIR))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
