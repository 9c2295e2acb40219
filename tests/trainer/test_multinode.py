"""Two "machines" on one: two torchrun invocations, --nnodes 2, node ranks 0 and 1, one process each.

They meet at a localhost rendezvous (``--master_addr 127.0.0.1 --master_port FREE``), exactly as two hosts
would meet at the first host's address. The run must train exactly what one machine with two processes
trains: the same two ranks, the same seeds, the same gloo reductions, so ``final/`` is bit-identical.
DDP and FSDP2 (asked for through the environment ``accelerate launch`` would export: environment.md §11).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_fsdp import _env, _free_port, _launcher, _run_config

FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}


def _node(rank: int, port: str, config: Path) -> list[str]:
    """The command machine ``rank`` of 2 runs: torchrun, one process, rendezvous at machine 0's address."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
            "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port,
            "-m", "cgpo", "train", str(config)]  # fmt: skip


def _two_nodes(tmp_path: Path, config: Path, env: dict[str, str]) -> list[subprocess.CompletedProcess]:
    port = str(_free_port())
    nodes = [subprocess.Popen(_node(rank, port, config), env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]  # fmt: skip
    results = []
    for node in nodes:
        out, err = node.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(node.args, node.returncode, out, err))
    return results


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_nodes_on_one_machine_train_what_one_machine_trains(tmp_path, tiny_models_dir, mode):
    from safetensors.torch import load_file

    steps = 2
    extra = FSDP_ENV if mode == "fsdp" else {}
    (tmp_path / "nodes.yaml").write_text(_run_config(tiny_models_dir, tmp_path / "nodes", steps=steps))
    (tmp_path / "one.yaml").write_text(_run_config(tiny_models_dir, tmp_path / "one", steps=steps))
    for node, result in enumerate(_two_nodes(tmp_path, tmp_path / "nodes.yaml", _env(tmp_path, **extra))):
        assert result.returncode == 0, f"node {node}: exit {result.returncode}\n{result.stderr[-6000:]}"
    one = subprocess.run([*_launcher(mode, 2), "-m", "cgpo", "train", str(tmp_path / "one.yaml")], env=_env(tmp_path),
                         cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert one.returncode == 0, one.stderr[-6000:]

    checkpoint = tmp_path / "nodes" / "checkpoints" / f"step-{steps}"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and (checkpoint / "rng-1.pt").is_file()
    if mode == "fsdp":  # each node wrote its own shard
        assert state["format"] == "dcp" and (checkpoint / "sharded" / "__1_0.distcp").is_file()
    else:
        assert "format" not in state and (checkpoint / "policy" / "model.safetensors").is_file()
    nodes = load_file(tmp_path / "nodes" / "final" / "model.safetensors")
    single = load_file(tmp_path / "one" / "final" / "model.safetensors")
    assert nodes.keys() == single.keys()
    assert all(bool((nodes[k] == single[k]).all()) for k in nodes)
