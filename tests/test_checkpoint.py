"""Checkpoint faults, injected: corrupt files, a missing manifest, and writes that fail on a full disk.

Checkpoints are written with the real functions the trainer uses (``write_process_state``,
``write_main_files``, ``publish``) on the test-size tiny policy with a real AdamW state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cgpo import checkpoint as ckpt
from cgpo.errors import UserError


def make_training_state(policy_dir: Path) -> tuple[object, object, object, object]:
    """(model, tokenizer, optimizer, scheduler) after one AdamW step, so optimizer.pt holds real moments."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    model = AutoModelForCausalLM.from_pretrained(policy_dir)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = get_scheduler("constant", optimizer)
    ids = torch.tensor([[1, 2, 3, 4]])
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    scheduler.step()
    return model, tokenizer, optimizer, scheduler


def write_checkpoint(output_dir: Path, step: int, parts: tuple[object, ...], keep: int = 5) -> Path:
    """What ``CGPOTrainer.save_checkpoint`` does on one process."""
    model, tokenizer, optimizer, scheduler = parts
    staging = ckpt.staging_dir(output_dir, step)
    staging.mkdir(parents=True, exist_ok=True)
    ckpt.write_process_state(staging, 0, {"task": {"cache": [1, 2]}})
    ckpt.write_main_files(staging, model=model, weights=model.state_dict(), tokenizer=tokenizer,  # type: ignore[attr-defined]
                          optimizer=optimizer, scheduler=scheduler, state={"step": step, "world_size": 1})  # fmt: skip
    return ckpt.publish(staging, step, keep)


@pytest.fixture(scope="module")
def parts(tiny_models_dir: Path) -> tuple[object, ...]:
    return make_training_state(tiny_models_dir / "policy")


def test_the_manifest_lists_every_file_and_a_fresh_checkpoint_verifies(tmp_path, parts):
    folder = write_checkpoint(tmp_path, 2, parts)
    manifest = json.loads((folder / ckpt.MANIFEST_FILE).read_text())
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {ckpt.MANIFEST_FILE}
    assert set(manifest["files"]) == on_disk
    assert {"optimizer.pt", "scheduler.pt", "rng-0.pt", "trainer_state.json", "policy/model.safetensors"} <= on_disk
    assert ckpt.verify_checkpoint(folder) is None
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no staging or temporary file left


def test_a_truncated_optimizer_file_falls_back_to_the_previous_checkpoint(tmp_path, parts):
    older = write_checkpoint(tmp_path, 2, parts)
    newest = write_checkpoint(tmp_path, 4, parts)
    optimizer_file = newest / "optimizer.pt"
    size = optimizer_file.stat().st_size
    os.truncate(optimizer_file, size // 2)  # what a full network disk leaves behind
    logged: list[str] = []
    assert ckpt.latest_valid_checkpoint(tmp_path, logged.append) == older
    assert logged == [
        (
            f"warning: skipping checkpoint {newest}: optimizer.pt has {size // 2} bytes, the manifest says {size} "
            "(truncated or overwritten)"
        )
    ]
    # The resumed state loads: the fallback is usable, not merely present.
    torch.load(older / "optimizer.pt", weights_only=False)


def test_an_altered_byte_of_the_same_size_is_caught_by_its_checksum(tmp_path, parts):
    older = write_checkpoint(tmp_path, 2, parts)
    newest = write_checkpoint(tmp_path, 4, parts)
    weights_file = newest / "policy" / "model.safetensors"
    data = bytearray(weights_file.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the weights
    weights_file.write_bytes(bytes(data))
    logged: list[str] = []
    assert ckpt.latest_valid_checkpoint(tmp_path, logged.append) == older
    assert logged == [
        (
            f"warning: skipping checkpoint {newest}: policy/model.safetensors does not match its sha256 in "
            "manifest.json (the file was altered)"
        )
    ]


def test_a_missing_file_and_an_unreadable_manifest_are_reasons(tmp_path, parts):
    folder = write_checkpoint(tmp_path, 2, parts)
    (folder / "rng-0.pt").unlink()
    assert ckpt.verify_checkpoint(folder) == "rng-0.pt is missing"
    (folder / ckpt.MANIFEST_FILE).write_text("{not json")
    assert ckpt.verify_checkpoint(folder).startswith("manifest.json is unreadable (JSONDecodeError")


def test_a_checkpoint_from_before_manifests_is_used_unverified_and_says_so(tmp_path, parts):
    folder = write_checkpoint(tmp_path, 2, parts)
    (folder / ckpt.MANIFEST_FILE).unlink()
    logged: list[str] = []
    assert ckpt.latest_valid_checkpoint(tmp_path, logged.append) == folder
    assert logged == [
        (
            f"warning: {folder} has no manifest.json (written by a cgpo version before checksums); "
            "resuming from it unverified"
        )
    ]


def test_no_checkpoint_at_all_is_none_and_none_verifying_is_a_user_error(tmp_path, parts):
    assert ckpt.latest_valid_checkpoint(tmp_path, print) is None
    folder = write_checkpoint(tmp_path, 2, parts)
    os.truncate(folder / "scheduler.pt", 0)
    with pytest.raises(UserError, match=r"no checkpoint in .*checkpoints verifies \(skipped step-2\); .*--fresh"):
        ckpt.latest_valid_checkpoint(tmp_path, lambda line: None)


def test_publishing_prunes_older_checkpoints_and_drops_those_of_an_abandoned_future(tmp_path, parts):
    for step in (2, 4, 6):
        write_checkpoint(tmp_path, step, parts, keep=2)
    assert [s for s, _ in ckpt.complete_checkpoints(tmp_path)] == [4, 6]
    # A run resumed from step-4 (step-6 was corrupt) publishes step 5: step-6 must not push it out.
    write_checkpoint(tmp_path, 5, parts, keep=1)
    assert [s for s, _ in ckpt.complete_checkpoints(tmp_path)] == [5]


def test_an_error_that_is_not_an_io_failure_is_not_disguised():
    with pytest.raises(ValueError, match="a bug"), ckpt._write_errors_named(Path("x")):
        raise ValueError("a bug")


# ----------------------------------------------------------------------------------------------------------------
# Full disk: a file size limit (RLIMIT_FSIZE) in a subprocess makes every large write fail with EFBIG
# ----------------------------------------------------------------------------------------------------------------
FULL_DISK_SCRIPT = textwrap.dedent(
    """
    import json, resource, signal, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[3])
    from test_checkpoint import make_training_state, write_checkpoint
    from cgpo import checkpoint as ckpt

    out, policy = Path(sys.argv[1]), Path(sys.argv[2])
    parts = make_training_state(policy)
    model, tokenizer = parts[0], parts[1]
    write_checkpoint(out, 2, parts)
    ckpt.save_final_atomically(out, model=model, tokenizer=tokenizer, weights=None)
    # The disk "fills up": writes past 20 kB fail with EFBIG instead of killing the process with SIGXFSZ.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
    report = {}
    for name, write in [
        ("checkpoint", lambda: write_checkpoint(out, 4, parts)),
        ("final", lambda: ckpt.save_final_atomically(out, model=model, tokenizer=tokenizer, weights=None)),
        ("torch_save", lambda: ckpt.torch_save(parts[2].state_dict(), out / "optimizer.pt")),
    ]:
        try:
            write()
            report[name] = None
        except ckpt.CheckpointWriteError as exc:
            report[name] = str(exc)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    report["latest"] = str(ckpt.latest_valid_checkpoint(out, print))
    print(json.dumps(report))
    """
)


def test_a_full_disk_during_a_checkpoint_or_the_final_model_keeps_the_previous_ones(tmp_path, tiny_models_dir):
    out = tmp_path / "run"
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), str(out), str(tiny_models_dir / "policy"), str(Path(__file__).parent)],
        check=False, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    staging = ckpt.staging_dir(out, 4)
    # One line naming what could not be written, and why.
    assert report["checkpoint"].startswith(f"cannot write {staging}/")
    assert report["checkpoint"].endswith(": File too large (the disk is full or a file size limit was reached)")
    assert "\n" not in report["checkpoint"]
    # torch.save's own "unexpected pos" RuntimeError is replaced by the file's OS error.
    assert report["torch_save"] == (
        f"cannot write {out / 'optimizer.pt'}: File too large (the disk is full or a file size limit was reached)"
    )
    assert report["final"].startswith(f"cannot write {out / '.final.tmp'}")
    # Nothing half-written is left, and the previous checkpoint and final model are intact and used.
    assert not staging.exists() and not (out / ".final.tmp").exists()
    assert report["latest"] == str(out / "checkpoints" / "step-2")
    assert [s for s, _ in ckpt.complete_checkpoints(out)] == [2]
    assert ckpt.verify_checkpoint(out / "final") is None
