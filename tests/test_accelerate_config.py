"""Accelerate config files: the shipped ones validate and launch; broken ones fail with file, key path and line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cgpo.cli import main
from cgpo.config_loader import detect_kind

REPO = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))
# DeepSpeed files are not shipped (cgpo train refuses DeepSpeed); `cgpo validate` still checks a user's own.
DEEPSPEED_FIXTURES = sorted((REPO / "tests" / "fixtures" / "accelerate").glob("deepspeed_*.yaml"))
ALL_CONFIGS = ACCELERATE_CONFIGS + DEEPSPEED_FIXTURES


def test_every_shipped_accelerate_config_validates(capsys):
    assert {p.name for p in ACCELERATE_CONFIGS} == {"ddp.yaml", "fsdp.yaml"}
    assert {p.name for p in DEEPSPEED_FIXTURES} == {"deepspeed_zero2.yaml", "deepspeed_zero3.yaml"}
    assert all(detect_kind(p) == "accelerate" for p in ALL_CONFIGS)
    code = main(["validate", *map(str, ALL_CONFIGS)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.count(": ok (accelerate config: ") == len(ALL_CONFIGS), out
    assert "fsdp.yaml: ok (accelerate config: FSDP2 full shard, 8 processes, bf16)" in out
    assert (
        "deepspeed_zero3.yaml: ok (accelerate config: DeepSpeed ZeRO-3, 8 processes, bf16; note: cgpo train refuses "
        "DeepSpeed (use FSDP2 for ZeRO-3-style sharding, or DDP))" in out
    )


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: p.name)
def test_accelerate_launch_reads_the_shipped_config_as_intended(path, monkeypatch):
    """accelerate's own launcher (its private argument check) reads each file into the intended launch."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    monkeypatch.setenv("HF_HOME", str(path.parent / "no-such-hf-home"))  # no default config file interferes
    args = launch_command_parser().parse_args(["--config_file", str(path), "train.py"])
    args, _, _ = _validate_launch_command(args)
    assert args.num_processes == 8 and args.num_machines == 1 and args.mixed_precision == "bf16"
    expected = {"ddp.yaml": (True, False, False), "fsdp.yaml": (False, True, False)}
    assert (args.multi_gpu, args.use_fsdp, args.use_deepspeed) == expected.get(path.name, (False, False, True))
    if path.name == "fsdp.yaml":
        from accelerate.utils import FullyShardedDataParallelPlugin
        from accelerate.utils.launch import prepare_multi_gpu_env

        for key, value in prepare_multi_gpu_env(args).items():
            if key.startswith("FSDP_"):
                monkeypatch.setenv(key, value)
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
        assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
        assert plugin.cpu_ram_efficient_loading is False
    if path.name.startswith("deepspeed"):
        assert int(args.zero_stage) == int(path.stem[-1])
        assert int(args.gradient_accumulation_steps) == 1


def test_a_config_written_by_accelerate_itself_validates(tmp_path, capsys):
    from accelerate.commands.config.config_args import ClusterConfig

    path = tmp_path / "default_config.yaml"
    ClusterConfig(compute_environment="LOCAL_MACHINE", distributed_type="MULTI_GPU", mixed_precision="fp16",
                  use_cpu=False, debug=False, num_processes=4, downcast_bf16="no").to_yaml_file(path)  # fmt: skip
    assert main(["validate", str(path)]) == 0
    assert "ok (accelerate config: DDP (MULTI_GPU), 4 processes, fp16)" in capsys.readouterr().out


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line.split("#")[0])


# name: (shipped file or fixture, old text ("X..." cuts from X to the end), new text, expected "key.path: reason" start,
#        text on the line the error must name)
MUTATIONS = {
    "unknown key": ("ddp.yaml", "num_processes: 8", "num_procesess: 8",
                    "num_procesess: unknown accelerate config key; did you mean 'num_processes'?", "num_procesess"),
    "unknown fsdp key": ("fsdp.yaml", "fsdp_auto_wrap_policy:", "fsdp_auto_wrap_polcy:",
                         ("fsdp_config.fsdp_auto_wrap_polcy: unknown fsdp_config key (accelerate launch would ignore "
                         "it); did you mean 'fsdp_auto_wrap_policy'?"), "fsdp_auto_wrap_polcy"),
    "unknown deepspeed key": ("deepspeed_zero3.yaml", "zero_stage: 3", "zero_stag: 3",
                              "deepspeed_config.zero_stag: unknown deepspeed_config key", "zero_stag"),
    "bad distributed_type": ("fsdp.yaml", "distributed_type: FSDP", "distributed_type: FSPD",
                             "distributed_type: unknown value 'FSPD'; did you mean 'FSDP'?", "distributed_type"),
    "fsdp without fsdp_config": ("fsdp.yaml", "fsdp_config:...", "fsdp_config: {}\n",
                                 "fsdp_config: distributed_type FSDP needs a non-empty fsdp_config", "fsdp_config"),
    "fsdp_config on DDP": ("ddp.yaml", "debug: false", "debug: false\nfsdp_config: {fsdp_version: 2}",
                           "fsdp_config: is only read with distributed_type FSDP", "fsdp_config"),
    "bad fsdp value": ("fsdp.yaml", "fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP",
                       "fsdp_auto_wrap_policy: TRANSFORMER_WRAP",
                       ("fsdp_config.fsdp_auto_wrap_policy: unknown value 'TRANSFORMER_WRAP'; did you mean "
                       "'TRANSFORMER_BASED_WRAP'?"), "TRANSFORMER_WRAP"),
    "FSDP1 key under FSDP2": ("fsdp.yaml", "fsdp_offload_params: false", "fsdp_backward_prefetch: BACKWARD_PRE",
                              "fsdp_config.fsdp_backward_prefetch: is an FSDP1 setting", "fsdp_backward_prefetch"),
    "unquoted no": ("ddp.yaml", "mixed_precision: bf16", "mixed_precision: no",
                    "mixed_precision: reads as the boolean false: write 'no' in quotes", "mixed_precision"),
    "bad mixed precision": ("ddp.yaml", "mixed_precision: bf16", "mixed_precision: bf32",
                            "mixed_precision: unknown value 'bf32'; allowed: no, fp16, bf16, fp8", "mixed_precision"),
    "no processes": ("ddp.yaml", "num_processes: 8", "num_processes: 0", "num_processes: must be >= 1, got 0",
                     "num_processes"),
    "wrong type": ("ddp.yaml", "num_machines: 1", "num_machines: one",
                   "num_machines: must be an integer, got a string 'one'", "num_machines"),
    "multi-machine without address": ("ddp.yaml", "num_machines: 1", "num_machines: 2",
                                      "main_process_ip: required with num_machines 2", None),
    "accumulation in deepspeed": ("deepspeed_zero2.yaml", "gradient_accumulation_steps: 1",
                                  "gradient_accumulation_steps: 4",
                                  "deepspeed_config.gradient_accumulation_steps: must be 1 for cgpo, got 4",
                                  "gradient_accumulation_steps"),
    "param offload on stage 2": ("deepspeed_zero2.yaml", "offload_param_device: none", "offload_param_device: cpu",
                                 "deepspeed_config.offload_param_device: parameter offload needs ZeRO stage 3",
                                 "offload_param_device"),
    "malformed yaml": ("fsdp.yaml", "fsdp_version: 2", "fsdp_version: [2", "(top level): invalid YAML", None),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_broken_accelerate_config_exits_2_with_file_key_and_line(case, tmp_path, capsys):
    source, old, new, expected, anchor = MUTATIONS[case]
    text = next(p for p in ALL_CONFIGS if p.name == source).read_text()
    if old.endswith("..."):
        mutated = text[: text.index(old[:-3])] + new
    else:
        assert old in text
        mutated = text.replace(old, new, 1)
    path = tmp_path / source
    path.write_text(mutated)
    code = main(["validate", str(path)])
    out, err = capsys.readouterr()
    assert code == 2, out
    assert err.startswith(f"{path}: {expected}"), err
    assert "Traceback" not in err and "cannot validate" not in err  # a located ConfigError, not a crash
    assert "(line " in err
    if anchor is not None:
        assert err.rstrip().endswith(f"(line {_line_of(mutated, anchor)})"), err


def test_console_script_prints_no_traceback(tmp_path):
    path = tmp_path / "fsdp.yaml"
    path.write_text((REPO / "configs" / "accelerate" / "fsdp.yaml").read_text().replace("FSDP\n", "FDSP\n", 1))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-m", "cgpo", "validate", str(path)], capture_output=True, text=True,
                            env=env, check=False)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}: distributed_type: unknown value 'FDSP'; did you mean 'FSDP'?")
    assert "Traceback" not in result.stderr


def test_overrides_are_refused_for_accelerate_configs(capsys):
    assert main(["validate", str(REPO / "configs" / "accelerate" / "ddp.yaml"), "num_processes=2"]) == 2
    assert "<command line>: num_processes: key=value overrides apply to cgpo configs" in capsys.readouterr().err
