"""Checkpoints that are complete or absent: written under a temporary name, then renamed.

Layout of ``OUTPUT_DIR/checkpoints/step-N/``::

    policy/              save_pretrained of the policy (the LoRA adapter only, with LoRA)
    optimizer.pt         optimizer state
    scheduler.pt         learning-rate scheduler state
    rng-<rank>.pt        Python, NumPy and torch (CPU and CUDA) RNG states of each process
    scorers-<rank>.json  each process's per-task baseline caches (generated a_bar and r(s, a_bar))
    trainer_state.json   step, per-task sampler positions, monitor state

A folder named ``step-N`` exists only once everything is in it (``os.rename`` of a finished temporary
folder is atomic on one file system), so a crash at any point leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoints_dir(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def complete_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every complete checkpoint, oldest first."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = complete_checkpoints(output_dir)
    return found[-1][1] if found else None


def rng_state() -> dict[str, Any]:
    import numpy as np

    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def staging_dir(output_dir: Path, step: int) -> Path:
    return checkpoints_dir(output_dir) / f".step-{step}.tmp"


def write_main_files(
    staging: Path,
    *,
    model: Any,
    weights: Mapping[str, Any],
    tokenizer: Any,
    optimizer: Any,
    scheduler: Any,
    state: Mapping[str, Any],
) -> None:
    """The main process's part of a checkpoint (model, optimizer, scheduler, trainer state).

    ``weights`` is the full state dict gathered from every process (``accelerator.get_state_dict``).
    """
    model.save_pretrained(staging / "policy", state_dict=dict(weights), safe_serialization=True)
    tokenizer.save_pretrained(staging / "policy")
    torch.save(optimizer.state_dict(), staging / "optimizer.pt")
    torch.save(scheduler.state_dict(), staging / "scheduler.pt")
    # The state file is what marks a checkpoint complete: write it last, atomically.
    tmp = staging / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
    os.replace(tmp, staging / STATE_FILE)


def write_process_state(staging: Path, rank: int, scorers: Mapping[str, Any]) -> None:
    """One process's RNG states and scorer caches."""
    torch.save(rng_state(), staging / f"rng-{rank}.pt")
    (staging / f"scorers-{rank}.json").write_text(json.dumps(scorers), encoding="utf-8")


def publish(staging: Path, step: int, keep: int) -> Path:
    """Rename the finished staging folder to ``step-N`` and delete all but the ``keep`` newest checkpoints."""
    final = staging.parent / f"step-{step}"
    if final.exists():
        shutil.rmtree(final)
    os.rename(staging, final)
    output_dir = staging.parent.parent
    for _, old in complete_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / STATE_FILE).read_text(encoding="utf-8")))


def load_process_state(folder: Path, rank: int) -> dict[str, Any]:
    """Restore one process's RNG states; return its scorer caches by task."""
    set_rng_state(torch.load(folder / f"rng-{rank}.pt", weights_only=False))
    return dict(json.loads((folder / f"scorers-{rank}.json").read_text(encoding="utf-8")))


def remove_stale_staging(output_dir: Path) -> None:
    """Delete half-written checkpoints left by a crash."""
    root = checkpoints_dir(output_dir)
    if root.is_dir():
        for child in root.glob(".step-*.tmp"):
            shutil.rmtree(child, ignore_errors=True)
