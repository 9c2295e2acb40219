"""How a distributed process ends (cgpo.distributed.shutdown): why it needs ``os._exit``, and that it loses nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_ddp import _free_port

# Two ranks of plain torch (nothing of cgpo's but the shutdown): FSDP2 on two Linear layers, three AdamW steps,
# gloo; then the group is destroyed and gc has run, and each rank lists its threads.
FSDP_THREADS = r"""
import gc, json, os, sys
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

torch.set_num_threads(1)
dist.init_process_group("gloo")
model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
fully_shard(model[0])
fully_shard(model)
optimizer = torch.optim.AdamW(model.parameters())
for _ in range(3):
    model(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
rank = dist.get_rank()
del model, optimizer

from cgpo.distributed.shutdown import exit_process, leave_process_group
leave_process_group()  # destroy_process_group()
gc.collect()
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
with open(os.path.join(sys.argv[1], f"threads-{rank}.json"), "w") as handle:
    handle.write(json.dumps(names))
exit_process(0)
"""

# One process in a one-rank gloo group, ending through exit_process: what it buffered must still arrive.
ONE_RANK = r"""
import atexit, logging, sys
import torch.distributed as dist
from cgpo.distributed.shutdown import exit_process, leave_process_group, left_a_process_group

if sys.argv[1] == "group":
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{sys.argv[3]}", rank=0, world_size=1)
atexit.register(lambda: print("atexit ran", flush=True))
logging.basicConfig(filename=sys.argv[2], level=logging.INFO)
logging.getLogger("run").info("last log line")
sys.stdout.write("buffered stdout, no newline")  # a pipe: block-buffered until flushed
sys.stderr.write("stderr tail")
leave_process_group()
assert dist.is_initialized() is False and left_a_process_group() is (sys.argv[1] == "group")
exit_process(3)
"""


@pytest.mark.slow
def test_fsdp2_gloo_threads_outlive_the_destroyed_process_group(tmp_path):
    """Why exit_process skips interpreter finalization after a distributed run: torch 2.13 keeps FSDP2's gloo
    process group (its worker threads) alive after destroy_process_group, and their teardown at exit now and
    then aborts the process. If this fails, a torch release frees them: the os._exit may no longer be needed."""
    script = tmp_path / "fsdp_threads.py"
    script.write_text(FSDP_THREADS)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), str(script), str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False,
                            env={**_base_env(), "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        names = json.loads((tmp_path / f"threads-{rank}.json").read_text())
        assert names.count("pt_gloo_runloop") == 2 and "gloo_tcp_loop" in names, names


@pytest.mark.parametrize("mode", ["group", "no group"])
def test_exit_process_flushes_everything_and_skips_finalizers_only_after_a_group(tmp_path, mode):
    """After a process group: exit status kept, stdout/stderr and the log file flushed, atexit hooks skipped
    (os._exit). Without one: a normal exit, atexit hooks run."""
    script, log = tmp_path / "one_rank.py", tmp_path / "run.log"
    script.write_text(ONE_RANK)
    result = subprocess.run([sys.executable, str(script), mode, str(log), str(_free_port())], capture_output=True,
                            text=True, timeout=60, check=False, env=_base_env())  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert result.stdout.startswith("buffered stdout, no newline") and "stderr tail" in result.stderr
    assert "last log line" in log.read_text()
    assert ("atexit ran" in result.stdout) is (mode == "no group")


def _base_env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
