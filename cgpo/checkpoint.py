"""Checkpoints that are complete or absent, and verified before a resume.

Layout of ``OUTPUT_DIR/checkpoints/step-N/``::

    policy/              save_pretrained of the policy (the LoRA adapter only, with LoRA)
    optimizer.pt         optimizer state (absent with ``training.save_optimizer_state: false``)
    scheduler.pt         learning-rate scheduler state
    rng-<rank>.pt        Python, NumPy and torch (CPU and CUDA) RNG states of each process
    scorers-<rank>.json  each process's per-task baseline caches (generated a_bar and r(s, a_bar))
    trainer_state.json   step, per-task sampler positions, monitor state
    manifest.json        size and sha256 of every other file, written last

A folder named ``step-N`` exists only once everything is in it (``os.rename`` of a finished temporary
folder is atomic on one file system), so a crash at any point leaves the previous checkpoint usable.

Corruption after the fact (a file truncated by a full disk on a network file system, a bit flip, a copy
interrupted by hand, a power loss before the page cache reached the disk) is caught by the manifest:
:func:`latest_valid_checkpoint` checks every file's size and sha256 and falls back to the newest checkpoint
that verifies, logging one line per checkpoint it skips. A checkpoint without ``manifest.json`` was written
by a cgpo version before checksums (this version always writes the manifest before the folder gets its
final name): it is used, unverified, with a logged line saying so, so that upgrading cgpo never strands a
run. Files in a checkpoint that the manifest does not list are ignored.

A write that fails (a full disk, ``RLIMIT_FSIZE``, a read-only mount) raises :class:`CheckpointWriteError`
(a one-line :class:`~cgpo.errors.UserError` naming the file) after removing the staging folder, so the
previous checkpoints stay the newest complete ones. :func:`save_final_atomically` does the same for
``OUTPUT_DIR/final/``. With several processes, each reports its write's outcome to all the others
(:func:`agree_on_write_failures`), so one process's failure stops every process at once with the same
error; and the main process alone verifies the checkpoint to resume from and broadcasts its choice
(:func:`agreed_resume_checkpoint`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from cgpo.errors import UserError

STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
OPTIMIZER_FILE = "optimizer.pt"
MANIFEST_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")
# safetensors (Rust) reports an I/O failure only in its message: "... I/O error: File too large (os error 27)".
_RUST_OS_ERROR = re.compile(r"I/O error: (?P<text>[^(]*)\(os error (?P<errno>\d+)\)")


class CheckpointWriteError(UserError):
    """Writing a checkpoint or the final model failed (a full disk, a file size limit, a read-only mount)."""


def checkpoints_dir(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def complete_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every published checkpoint, oldest first (not verified: see ``verify_checkpoint``)."""
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
    """The newest published checkpoint, unverified (cheap; use ``latest_valid_checkpoint`` to resume)."""
    found = complete_checkpoints(output_dir)
    return found[-1][1] if found else None


# ----------------------------------------------------------------------------------------------------------------
# Manifest: size and sha256 of every file, written last
# ----------------------------------------------------------------------------------------------------------------
def _sha256(path: Path, *, sync: bool = False) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:  # hashlib.file_digest is Python >= 3.11; cgpo supports 3.10
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
        if sync:  # the data reaches the disk before the manifest vouches for it
            os.fsync(handle.fileno())
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path) -> dict[str, Any]:
    """Write ``folder/manifest.json``: ``{"files": {relative path: {"size", "sha256"}}}``, atomically, last.

    Every file is flushed to disk (``fsync``) as it is hashed, so the manifest never vouches for data that
    is still only in the page cache.
    """
    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p, sync=True)}
        for p in _files(folder)
    }
    manifest = {"version": MANIFEST_VERSION, "algorithm": "sha256", "files": files}
    with _write_errors_named(folder / MANIFEST_FILE):
        tmp = folder / (MANIFEST_FILE + ".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, folder / MANIFEST_FILE)
    return manifest


def verify_checkpoint(folder: Path) -> str | None:
    """Why ``folder`` cannot be resumed from (its manifest disagrees with its files), or None when it verifies.

    Sizes are compared first (a truncated file costs no hashing), then every listed file's sha256.
    """
    path = folder / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("lists no files")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{MANIFEST_FILE} is unreadable ({type(exc).__name__}: {exc})"
    for name, entry in files.items():
        target = folder / name
        if not target.is_file():
            return f"{name} is missing"
        size = target.stat().st_size
        if size != entry["size"]:
            return f"{name} has {size} bytes, the manifest says {entry['size']} (truncated or overwritten)"
    for name, entry in files.items():
        if _sha256(folder / name) != entry["sha256"]:
            return f"{name} does not match its sha256 in {MANIFEST_FILE} (the file was altered)"
    return None


def latest_valid_checkpoint(output_dir: Path, log: Callable[[str], None]) -> Path | None:
    """The newest checkpoint that verifies against its manifest; None when there is no checkpoint at all.

    Logs one line for every newer checkpoint skipped and why, and one for a checkpoint without a manifest
    (written before checksums: used unverified). Raises ``UserError`` when checkpoints exist but none
    verifies: starting silently from step 0 would throw the run away.
    """
    found = complete_checkpoints(output_dir)
    skipped = []
    for _, folder in reversed(found):
        if not (folder / MANIFEST_FILE).exists():
            log(f"warning: {folder} has no {MANIFEST_FILE} (written by a cgpo version before checksums); "
                "resuming from it unverified")  # fmt: skip
            return folder
        reason = verify_checkpoint(folder)
        if reason is None:
            return folder
        log(f"warning: skipping checkpoint {folder}: {reason}")
        skipped.append(folder.name)
    if skipped:
        raise UserError(
            f"no checkpoint in {checkpoints_dir(output_dir)} verifies (skipped {', '.join(skipped)}); "
            "move them aside to inspect them, or start from step 0 with --fresh"
        )
    return None


# ----------------------------------------------------------------------------------------------------------------
# Write errors: one line naming the file, no staging folder left behind
# ----------------------------------------------------------------------------------------------------------------
def _os_error_of(exc: BaseException) -> OSError | None:
    """The operating-system error behind a failed write, or None when ``exc`` is not an I/O failure."""
    if isinstance(exc, OSError):
        return exc
    recorded = getattr(exc, "cgpo_os_error", None)
    if isinstance(recorded, OSError):
        return recorded
    match = _RUST_OS_ERROR.search(str(exc))
    if match:
        return OSError(int(match.group("errno")), match.group("text").strip())
    return None


@contextlib.contextmanager
def _write_errors_named(path: Path) -> Iterator[None]:
    """Turn an I/O failure while writing ``path`` into a one-line ``CheckpointWriteError`` naming it."""
    try:
        yield
    except CheckpointWriteError:
        raise
    except Exception as exc:
        cause = _os_error_of(exc)
        if cause is None:
            raise
        hint = " (the disk is full or a file size limit was reached)" if cause.errno in (
            errno.ENOSPC, errno.EFBIG, errno.EDQUOT) else ""  # fmt: skip
        where = cause.filename or path  # the exact file when the OS names it (open, rename), else the part
        raise CheckpointWriteError(f"cannot write {where}: {cause.strerror or cause}{hint}") from exc


@contextlib.contextmanager
def _staging_removed_on_failure(staging: Path) -> Iterator[None]:
    """A failed write removes the half-written folder, so nothing half-written can look complete."""
    try:
        yield
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


class _RecordingWriter:
    """A binary file that remembers the ``OSError`` of a failed write.

    ``torch.save`` turns an error of the file it writes to into ``RuntimeError("unexpected pos ...")``,
    which no longer says that the disk is full; the recorded error does.
    """

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return int(self._handle.write(data))
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self._handle.flush()


def torch_save(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)`` whose failures are one-line ``CheckpointWriteError``s naming ``path``."""
    with _write_errors_named(path), path.open("wb") as handle:
        writer = _RecordingWriter(handle)
        try:
            torch.save(obj, writer)  # type: ignore[arg-type]  # a file-like object with write/flush
        except RuntimeError as exc:
            if writer.error is None:
                raise
            exc.cgpo_os_error = writer.error  # type: ignore[attr-defined]
            raise


def _write_text(path: Path, text: str) -> None:
    with _write_errors_named(path):
        path.write_text(text, encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------
# RNG states
# ----------------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------------
# Writing and publishing a checkpoint
# ----------------------------------------------------------------------------------------------------------------
def staging_dir(output_dir: Path, step: int) -> Path:
    return checkpoints_dir(output_dir) / f".step-{step}.tmp"


def make_staging(staging: Path) -> None:
    """Create the staging folder (``CheckpointWriteError`` naming it on a read-only or full file system)."""
    with _write_errors_named(staging):
        staging.mkdir(parents=True, exist_ok=True)


def write_main_files(
    staging: Path,
    *,
    model: Any,
    weights: Mapping[str, Any],
    tokenizer: Any,
    optimizer: Any | None,
    scheduler: Any,
    state: Mapping[str, Any],
) -> None:
    """The main process's part of a checkpoint (model, optimizer, scheduler, trainer state).

    ``weights`` is the full state dict gathered from every process (``accelerator.get_state_dict``).
    ``optimizer`` None leaves ``optimizer.pt`` out (``training.save_optimizer_state: false``).
    Raises ``CheckpointWriteError`` (the staging folder removed) when a write fails.
    """
    with _staging_removed_on_failure(staging):
        with _write_errors_named(staging / "policy"):
            model.save_pretrained(staging / "policy", state_dict=dict(weights), safe_serialization=True)
            tokenizer.save_pretrained(staging / "policy")
        if optimizer is not None:
            torch_save(optimizer.state_dict(), staging / OPTIMIZER_FILE)
        torch_save(scheduler.state_dict(), staging / "scheduler.pt")
        # The state file is what marks a checkpoint complete: write it last, atomically.
        tmp = staging / (STATE_FILE + ".tmp")
        _write_text(tmp, json.dumps(state, indent=1))
        os.replace(tmp, staging / STATE_FILE)


def write_process_state(staging: Path, rank: int, scorers: Mapping[str, Any], *, remove_staging: bool = True) -> None:
    """One process's RNG states and scorer caches (``CheckpointWriteError`` on failure).

    ``remove_staging`` deletes the staging folder on a failure; with several processes sharing it, the
    caller removes it instead, once every process has stopped writing (:func:`agree_on_write_failures`).
    """
    with _staging_removed_on_failure(staging) if remove_staging else contextlib.nullcontext():
        torch_save(rng_state(), staging / f"rng-{rank}.pt")
        _write_text(staging / f"scorers-{rank}.json", json.dumps(scorers))


def publish(staging: Path, step: int, keep: int) -> Path:
    """Write the manifest, rename the staging folder to ``step-N``, and prune old checkpoints.

    Called on the main process once every process's files are in ``staging``. Kept: the ``keep`` newest
    checkpoints up to step N. Checkpoints *after* step N are deleted: they belong to a run this one
    abandoned (it resumed from an earlier, verified checkpoint, or started afresh), and left in place they
    would be resumed from next time, or count among the ``keep`` and push the new checkpoint out.
    """
    with _staging_removed_on_failure(staging):
        write_manifest(staging)
    final = staging.parent / f"step-{step}"
    if final.exists():
        shutil.rmtree(final)
    os.rename(staging, final)
    _fsync_dir(final.parent)
    output_dir = staging.parent.parent
    found = complete_checkpoints(output_dir)
    earlier = [folder for s, folder in found if s <= step]
    later = [folder for s, folder in found if s > step]
    for old in earlier[:-keep] + later:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------------------------------------------
# Several processes: one failed write stops them all at once; one process verifies what they resume from
# ----------------------------------------------------------------------------------------------------------------
def write_failure(write: Callable[[], Any]) -> str | None:
    """Run ``write``; the message of the ``CheckpointWriteError`` it raised, or None when it succeeded."""
    try:
        write()
    except CheckpointWriteError as exc:
        return str(exc)
    return None


def agree_on_write_failures(accelerator: Any, failure: str | None, staging: Path) -> None:
    """Every process learns whether any process's write failed, and then all raise the same error.

    A collective call (``gather_object`` of each process's message). Without it the process whose write
    failed exits alone: with NCCL the others wait at the next barrier until the collective timeout (30
    minutes by default); with gloo or under torchrun they die of the lost connection or the launcher's
    SIGTERM, with an unrelated traceback. Each process reports after its own writes, whatever happened; on a
    failure the main process removes the shared staging folder (no process writes there any more), and
    every process raises ``CheckpointWriteError`` with the first failed process's message (naming the
    process when there are several).
    """
    world = accelerator.num_processes
    if world > 1:
        from accelerate.utils import gather_object

        failures = gather_object([failure])
    else:
        failures = [failure]
    failed = [(rank, message) for rank, message in enumerate(failures) if message is not None]
    if not failed:
        return
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    rank, message = failed[0]
    raise CheckpointWriteError(message if world == 1 else f"{message} (on process {rank} of {world})")


def agreed_resume_checkpoint(accelerator: Any, output_dir: Path, log: Callable[[str], None]) -> Path | None:
    """:func:`latest_valid_checkpoint`, verified (sha256) by the main process only and broadcast to every process.

    Hashing every file once per process would multiply the reading of a multi-gigabyte checkpoint by the
    number of processes, and two processes could choose differently if a file changed in between. A
    ``UserError`` of the main process (no checkpoint verifies) is raised on every process.
    """
    if accelerator.num_processes == 1:
        return latest_valid_checkpoint(output_dir, log)
    from accelerate.utils import broadcast_object_list

    choice: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            folder = latest_valid_checkpoint(output_dir, log)
            choice = [("path", None if folder is None else str(folder))]
        except UserError as exc:
            choice = [("error", str(exc))]
    kind, value = broadcast_object_list(choice, from_process=0)[0]
    if kind == "error":
        raise UserError(value)
    return None if value is None else Path(value)


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


# ----------------------------------------------------------------------------------------------------------------
# The final model
# ----------------------------------------------------------------------------------------------------------------
_FINAL_STAGING = ".final.tmp"
_FINAL_OLD = ".final.old"


def save_final_atomically(output_dir: Path, *, model: Any, tokenizer: Any, weights: Mapping[str, Any] | None) -> Path:
    """Write ``OUTPUT_DIR/final/`` (``save_pretrained`` of model and tokenizer) all at once or not at all.

    The model is written to ``.final.tmp``; then the previous ``final/`` is renamed aside, the new one
    renamed into place, and the old one deleted, so at every instant ``final/`` is absent or complete.
    A failed write raises ``CheckpointWriteError`` naming the path, with ``.final.tmp`` removed and the
    previous ``final/`` untouched. ``weights`` is the gathered state dict (None: the model's own).
    """
    final, staging, old = output_dir / "final", output_dir / _FINAL_STAGING, output_dir / _FINAL_OLD
    if old.is_dir() and not final.exists():  # a crash between the two renames below: put the old one back
        os.rename(old, final)
    shutil.rmtree(staging, ignore_errors=True)
    with _staging_removed_on_failure(staging), _write_errors_named(staging):
        model.save_pretrained(staging, state_dict=None if weights is None else dict(weights), safe_serialization=True)
        tokenizer.save_pretrained(staging)
        write_manifest(staging)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.rename(final, old)
    os.rename(staging, final)
    _fsync_dir(output_dir)
    shutil.rmtree(old, ignore_errors=True)
    return final
