"""Validation of accelerate config files (``configs/accelerate/*.yaml``) for ``cgpo validate``.

``accelerate launch --config_file F`` reads ``F`` with accelerate's own ``ClusterConfig``: it rejects unknown
top-level keys, but it copies every key of the nested sections (``fsdp_config``, ``deepspeed_config``, ...)
onto its launch arguments *without checking them*: a misspelt ``fsdp_auto_wrap_polcy`` is silently ignored,
and a wrong value surfaces only once all processes have started and loaded the model. This module checks
the whole file up front, against the installed accelerate:

- top-level keys and their types: the fields and annotations of ``ClusterConfig`` (plus the two legacy keys
  its ``process_config`` still converts, ``fp16`` and ``dynamo_backend``);
- enum values: ``ComputeEnvironment``, ``DistributedType``, the ``mixed_precision`` choices of the launcher;
- nested keys: each must name a launch argument, the way ``accelerate launch`` maps it (``fsdp_config.x`` to
  ``--fsdp_x``, ``deepspeed_config.x`` to ``--x`` of the DeepSpeed group, ...), with that argument's type and
  choices, and the FSDP and DeepSpeed value sets of ``accelerate.utils.constants``;
- consistency: ``fsdp_config`` present iff ``distributed_type: FSDP``, ``deepspeed_config`` iff
  ``DEEPSPEED``, process and machine counts, multi-machine rendezvous settings;
- what cgpo's trainer needs: DeepSpeed ``gradient_accumulation_steps`` of 1 (cgpo accumulates the tasks of
  a step itself).

Every problem raises :class:`cgpo.errors.ConfigError` with the file, the key path and the line. accelerate
(and with it torch) is imported inside :func:`validate_accelerate_config` only, so that importing this
module stays cheap.
"""

from __future__ import annotations

import difflib
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cgpo.errors import ConfigError
from cgpo.schema import KeyPath, type_name
from cgpo.yamlio import SourcedDict, load_yaml, locate

#: Top-level keys that mark a YAML file as an accelerate config (``cgpo.config_loader.detect_kind``).
ACCELERATE_MARKERS = frozenset({"compute_environment", "distributed_type"})

#: Top-level keys that ``ClusterConfig.process_config`` still accepts and converts (older config files).
_LEGACY_KEYS: dict[str, Any] = {"fp16": bool, "dynamo_backend": str}

#: How ``accelerate launch`` maps a nested section onto its arguments: (prefix of the argument names,
#: whether the prefix is added to keys that lack it). The DeepSpeed keys share no prefix; they are the
#: launcher's "DeepSpeed Arguments" group.
_SECTIONS: dict[str, tuple[str, bool]] = {
    "fsdp_config": ("fsdp_", True),
    "fp8_config": ("fp8_", True),
    "dynamo_config": ("dynamo_", True),
    "megatron_lm_config": ("megatron_lm_", False),
    "parallelism_config": ("parallelism_config_", False),
    "mpirun_config": ("mpirun_", False),
}

#: The section that must be non-empty for each distributed type (and empty otherwise).
_SECTION_OF_TYPE = {"FSDP": "fsdp_config", "DEEPSPEED": "deepspeed_config", "MEGATRON_LM": "megatron_lm_config"}

_RDZV_BACKENDS = ("static", "c10d", "etcd", "etcd-v2")
_OFFLOAD_DEVICES = ("none", "cpu", "nvme")
_FSDP_BOOLEANS = (
    "fsdp_offload_params",
    "fsdp_forward_prefetch",
    "fsdp_use_orig_params",
    "fsdp_cpu_ram_efficient_loading",
    "fsdp_sync_module_states",
    "fsdp_activation_checkpointing",
    "fsdp_activation_checkpointing_offload",
)


@dataclass(frozen=True)
class _Argument:
    """One ``accelerate launch`` argument a nested key maps to: its value kind and allowed choices."""

    dest: str
    kind: str  # "bool", "int", "float" or "str"
    choices: tuple[str, ...] | None


@functools.lru_cache(maxsize=1)
def _launch_arguments() -> tuple[dict[str, _Argument], frozenset[str]]:
    """Every ``accelerate launch`` argument by name, and the names in its DeepSpeed group."""
    import argparse

    from accelerate.commands.launch import launch_command_parser

    parser = launch_command_parser()
    arguments: dict[str, _Argument] = {}
    for action in parser._actions:  # argparse has no public accessor for the declared arguments
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            kind = "bool"
        elif action.type is int:
            kind = "int"
        elif action.type is float:
            kind = "float"
        elif isinstance(action.default, str) and action.default.lower() in ("true", "false"):
            kind = "bool"  # declared as str, parsed with str_to_bool: YAML writes a real boolean
        else:
            kind = "str"
        choices = tuple(str(c) for c in action.choices) if action.choices else None
        arguments.setdefault(action.dest, _Argument(action.dest, kind, choices))
    deepspeed = frozenset(
        action.dest
        for group in parser._action_groups
        if "deepspeed" in (group.title or "").lower()
        for action in group._group_actions
    )
    return arguments, deepspeed


def _matches(annotation: Any, value: Any) -> bool:
    """Whether ``value`` (from YAML) fits a ``ClusterConfig`` field annotation."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(arm, value) for arm in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return isinstance(value, list) and all(_matches(item, v) for v in value)
    if origin is dict or annotation is dict:
        return isinstance(value, Mapping)
    if annotation is bool:  # `accelerate config` itself writes downcast_bf16: 'no'
        return isinstance(value, bool) or (isinstance(value, str) and value.lower() in ("yes", "no", "true", "false"))
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if isinstance(annotation, type) and issubclass(annotation, str):  # str enums: checked by value later
        return isinstance(value, str)
    return True


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(_describe(a) for a in arms)
    if origin is list:
        return "a list of strings"
    if origin is dict or annotation is dict:
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(annotation, "a string")


def _suggest(value: str, allowed: typing.Iterable[str]) -> str:
    options = [str(a) for a in allowed]
    close = difflib.get_close_matches(str(value), options, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else f"; allowed: {', '.join(options)}"


class _Checker:
    """Walks one loaded accelerate config and raises a located ConfigError at the first problem."""

    def __init__(self, tree: SourcedDict, display: str) -> None:
        self.tree = tree
        self.display = display

    def fail(self, path: KeyPath, reason: str) -> typing.NoReturn:
        file, key_path, line = locate(self.tree, path, self.display)
        raise ConfigError(file, key_path, reason, line)

    # -- top level ------------------------------------------------------------------------------------------
    def run(self) -> str:
        from accelerate.commands.config.config_args import ClusterConfig
        from accelerate.utils import ComputeEnvironment, DistributedType

        tree = self.tree
        hints = typing.get_type_hints(ClusterConfig)
        fields = {name: hints[name] for name in ClusterConfig.__dataclass_fields__}
        allowed = {**fields, **_LEGACY_KEYS}
        for key in tree:
            if key not in allowed:
                self.fail((key,), f"unknown accelerate config key{_suggest(str(key), allowed)}")
        environment = tree.get("compute_environment", ComputeEnvironment.LOCAL_MACHINE.value)
        environments = [e.value for e in ComputeEnvironment]
        if environment not in environments:
            self.fail(("compute_environment",), f"unknown value '{environment}'{_suggest(environment, environments)}")
        if environment != ComputeEnvironment.LOCAL_MACHINE.value:
            self.fail(("compute_environment",), "cgpo runs on LOCAL_MACHINE configs (accelerate launch on your own "
                      "machines); SageMaker launches are not supported")  # fmt: skip
        if "distributed_type" not in tree:
            self.fail(("distributed_type",), "missing required key (NO, MULTI_GPU, FSDP, DEEPSPEED, ...)")
        types_ = [t.value for t in DistributedType]
        distributed = tree["distributed_type"]
        if distributed not in types_:
            self.fail(("distributed_type",), f"unknown value {distributed!r}{_suggest(str(distributed), types_)}")
        for key, value in tree.items():
            annotation = allowed[key]
            if key in ("compute_environment", "distributed_type", "mixed_precision"):
                continue
            if not _matches(annotation, value):
                self.fail((key,), f"must be {_describe(annotation)}, got {type_name(value)} {value!r}")
        precision = self._mixed_precision()
        processes = self._processes(distributed)
        self._sections(distributed)
        detail = self._detail(distributed)
        machines = tree.get("num_machines", 1)
        where = f" on {machines} machines" if machines > 1 else ""
        count = f"{processes} process{'es' if processes != 1 else ''}" if processes else "--num_processes at launch"
        summary = f"accelerate config: {detail}, {count}{where}, {precision}"
        if distributed == DistributedType.DEEPSPEED.value:
            # Valid for accelerate, but the trainer refuses it: say so now rather than only at launch.
            summary += "; note: cgpo train refuses DeepSpeed (use FSDP2 for ZeRO-3-style sharding, or DDP)"
        return summary

    def _mixed_precision(self) -> str:
        choices = _launch_arguments()[0]["mixed_precision"].choices or ()
        value = self.tree.get("mixed_precision", "no")
        if value is False:  # YAML 1.1 reads a bare `no` as the boolean false
            self.fail(("mixed_precision",), "reads as the boolean false: write 'no' in quotes")
        if value is None:
            return "no"
        if value not in choices:
            self.fail(("mixed_precision",), f"unknown value {value!r}{_suggest(str(value), choices)}")
        return str(value)

    def _processes(self, distributed: str) -> int | None:
        tree = self.tree
        processes = tree.get("num_processes")
        machines = tree.get("num_machines", 1)
        if processes is not None and processes < 1:
            self.fail(("num_processes",), f"must be >= 1, got {processes} (or leave it out and pass --num_processes)")
        if machines < 1:
            self.fail(("num_machines",), f"must be >= 1, got {machines}")
        rank = tree.get("machine_rank", 0)
        if not 0 <= rank < machines:
            self.fail(("machine_rank",), f"must be in [0, num_machines - 1] = [0, {machines - 1}], got {rank}")
        if distributed == "NO" and processes not in (None, 1):
            self.fail(("num_processes",), f"distributed_type NO runs a single process, got {processes}")
        if distributed.startswith("MULTI_") and processes is not None and processes < 2:
            self.fail(("num_processes",), f"{distributed} needs at least 2 processes, got {processes}")
        if processes is not None and processes % machines:
            self.fail(("num_processes",), f"is the total over all machines: {processes} processes do not divide "
                      f"evenly over {machines} machines")  # fmt: skip
        if machines > 1 and not tree.get("main_process_ip"):
            self.fail(("main_process_ip",), f"required with num_machines {machines}: the address of machine 0")
        port = tree.get("main_process_port")
        if port is not None and not 1 <= port <= 65535:
            self.fail(("main_process_port",), f"must be a TCP port in [1, 65535], got {port}")
        backend = tree.get("rdzv_backend", "static")
        if backend is not None and backend not in _RDZV_BACKENDS:
            self.fail(("rdzv_backend",), f"unknown value {backend!r}{_suggest(backend, _RDZV_BACKENDS)}")
        gpu_ids = tree.get("gpu_ids")
        if isinstance(gpu_ids, str) and gpu_ids != "all":
            ids = [part.strip() for part in gpu_ids.split(",")]
            if not all(part.isdigit() for part in ids):
                self.fail(("gpu_ids",), f"must be 'all' or comma-separated GPU numbers such as '0,1', got {gpu_ids!r}")
            if processes is not None and len(ids) < processes // machines:
                self.fail(("gpu_ids",), f"lists {len(ids)} GPUs for {processes // machines} processes per machine")
        return int(processes) if processes is not None else None

    # -- nested sections ------------------------------------------------------------------------------------
    def _sections(self, distributed: str) -> None:
        tree = self.tree
        for required_type, section in _SECTION_OF_TYPE.items():
            present = bool(tree.get(section))
            if distributed == required_type and not present:
                self.fail((section,), f"distributed_type {distributed} needs a non-empty {section}")
            if distributed != required_type and present:
                self.fail((section,), f"is only read with distributed_type {required_type}, this config is "
                          f"{distributed}: remove it or change distributed_type")  # fmt: skip
        arguments, deepspeed = _launch_arguments()
        for section in ("deepspeed_config", *_SECTIONS):
            values = tree.get(section)
            if not values:
                continue
            for key, value in values.items():
                dest = self._dest(section, str(key), arguments, deepspeed)
                self._check_argument((section, key), arguments[dest], value)
        if distributed == "FSDP":
            self._fsdp(tree["fsdp_config"])
        if distributed == "DEEPSPEED":
            self._deepspeed(tree["deepspeed_config"])

    def _dest(self, section: str, key: str, arguments: dict[str, _Argument], deepspeed: frozenset[str]) -> str:
        """The launch argument ``section.key`` sets, the way ``accelerate launch`` maps it; unknown keys fail."""
        if section == "deepspeed_config":
            known = sorted(deepspeed)
            dest = key
        else:
            prefix, add = _SECTIONS[section]
            known = sorted(d for d in arguments if d.startswith(prefix))
            dest = prefix + key if add and not key.startswith(prefix) else key
        if dest not in known:
            self.fail(
                (section, key), f"unknown {section} key (accelerate launch would ignore it){_suggest(key, known)}"
            )
        return dest

    def _check_argument(self, path: KeyPath, argument: _Argument, value: Any) -> None:
        if value is None:
            return
        ok = {
            "bool": isinstance(value, bool) or (isinstance(value, str) and value.lower() in ("true", "false")),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, int | float) and not isinstance(value, bool),
            # str-typed launch arguments include flags that accelerate stringifies (zero3_init_flag: true)
            "str": isinstance(value, str | int | float | bool),
        }[argument.kind]
        if not ok:
            wanted = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}
            self.fail(path, f"must be {wanted[argument.kind]}, got {type_name(value)} {value!r}")
        if argument.choices is not None and str(value) not in argument.choices:
            self.fail(path, f"unknown value {value!r}{_suggest(str(value), argument.choices)}")

    def _fsdp(self, raw: Mapping[str, Any]) -> None:
        """FSDP values (accelerate.utils.constants), under the FSDP version they belong to."""
        from accelerate.utils.constants import (
            FSDP2_STATE_DICT_TYPE,
            FSDP_AUTO_WRAP_POLICY,
            FSDP_BACKWARD_PREFETCH,
            FSDP_SHARDING_STRATEGY,
            FSDP_STATE_DICT_TYPE,
        )

        config = {(k if str(k).startswith("fsdp_") else f"fsdp_{k}"): v for k, v in raw.items()}
        original = {(k if str(k).startswith("fsdp_") else f"fsdp_{k}"): k for k in raw}

        def fail(key: str, reason: str) -> typing.NoReturn:
            self.fail(("fsdp_config", original[key]), reason)

        version = int(config.get("fsdp_version", 1))

        def one_of(key: str, allowed: typing.Sequence[str]) -> None:
            if key in config and str(config[key]).upper() not in allowed:
                fail(key, f"unknown value {config[key]!r}{_suggest(str(config[key]), allowed)}")

        one_of("fsdp_sharding_strategy", FSDP_SHARDING_STRATEGY)
        one_of("fsdp_auto_wrap_policy", FSDP_AUTO_WRAP_POLICY)
        one_of("fsdp_backward_prefetch", FSDP_BACKWARD_PREFETCH)
        one_of("fsdp_state_dict_type", FSDP_STATE_DICT_TYPE if version == 1 else FSDP2_STATE_DICT_TYPE)
        reshard = config.get("fsdp_reshard_after_forward")
        if reshard is not None:
            if version == 2 and not isinstance(reshard, bool):
                fail("fsdp_reshard_after_forward", f"must be true or false with fsdp_version 2, got {reshard!r}")
            if version == 1 and str(reshard).upper() not in FSDP_SHARDING_STRATEGY:
                fail("fsdp_reshard_after_forward",
                     f"with fsdp_version 1 this is the sharding strategy{_suggest(str(reshard), FSDP_SHARDING_STRATEGY)}")  # fmt: skip
        if version == 2:
            for key in ("fsdp_backward_prefetch", "fsdp_forward_prefetch", "fsdp_use_orig_params",
                        "fsdp_sync_module_states", "fsdp_sharding_strategy"):  # fmt: skip
                if key in config:
                    fail(key, "is an FSDP1 setting; fsdp_version 2 does not read it")
        for key in _FSDP_BOOLEANS:
            if key in config and not isinstance(config[key], bool):
                fail(key, f"must be true or false, got {config[key]!r}")
        policy = str(config.get("fsdp_auto_wrap_policy", "")).upper()
        if "fsdp_transformer_layer_cls_to_wrap" in config and policy != "TRANSFORMER_BASED_WRAP":
            fail(
                "fsdp_transformer_layer_cls_to_wrap", "is only read with fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP"
            )
        if "fsdp_min_num_params" in config:
            if policy != "SIZE_BASED_WRAP":
                fail("fsdp_min_num_params", "is only read with fsdp_auto_wrap_policy SIZE_BASED_WRAP")
            if config["fsdp_min_num_params"] < 1:
                fail("fsdp_min_num_params", f"must be >= 1, got {config['fsdp_min_num_params']}")
        layers = config.get("fsdp_transformer_layer_cls_to_wrap")
        if layers is not None and not all(part.strip().isidentifier() for part in str(layers).split(",")):
            fail("fsdp_transformer_layer_cls_to_wrap",
                 f"must be comma-separated class names such as LlamaDecoderLayer, got {layers!r}")  # fmt: skip

    def _deepspeed(self, config: Mapping[str, Any]) -> None:
        """DeepSpeed values, the settings accelerate refuses to mix with a JSON file, and cgpo's needs."""
        from accelerate.utils.constants import DEEPSPEED_MULTINODE_LAUNCHERS

        def fail(key: str, reason: str) -> typing.NoReturn:
            self.fail(("deepspeed_config", key), reason)

        file_settings = ("zero_stage", "offload_optimizer_device", "offload_param_device", "gradient_clipping",
                         "offload_optimizer_nvme_path", "offload_param_nvme_path", "zero3_save_16bit_model")  # fmt: skip
        if "deepspeed_config_file" in config:
            for key in file_settings:
                if key in config:
                    fail(key, "is set in deepspeed_config_file; accelerate refuses both (remove one)")
        elif "zero_stage" not in config:
            fail("zero_stage", "missing: set 0, 1, 2 or 3 (or deepspeed_config_file)")
        stage = config.get("zero_stage")
        if stage is not None and stage not in (0, 1, 2, 3):
            fail("zero_stage", f"must be 0, 1, 2 or 3, got {stage!r}")
        for kind in ("optimizer", "param"):
            device = config.get(f"offload_{kind}_device")
            if device is None:
                continue
            if device not in _OFFLOAD_DEVICES:
                fail(f"offload_{kind}_device", f"unknown value {device!r}{_suggest(str(device), _OFFLOAD_DEVICES)}")
            if device == "nvme" and not config.get(f"offload_{kind}_nvme_path"):
                fail(f"offload_{kind}_device", f"nvme needs offload_{kind}_nvme_path")
        if config.get("offload_param_device", "none") != "none" and stage is not None and stage < 3:
            fail("offload_param_device", f"parameter offload needs ZeRO stage 3, this is stage {stage}")
        for key in ("zero3_init_flag", "zero3_save_16bit_model"):
            if key in config and not isinstance(config[key], bool):
                fail(key, f"must be true or false, got {config[key]!r}")
            if config.get(key) and stage is not None and stage != 3:
                fail(key, f"only applies to ZeRO stage 3, this is stage {stage}")
        steps = config.get("gradient_accumulation_steps", 1)
        if steps != 1:
            fail("gradient_accumulation_steps", f"must be 1 for cgpo, got {steps}: the trainer accumulates the tasks "
                 "of a step itself (lower training.micro_batch_size or a task's batch_size to save memory)")  # fmt: skip
        clipping = config.get("gradient_clipping")
        if clipping is not None and clipping <= 0:
            fail("gradient_clipping", f"must be > 0, got {clipping}")
        launcher = config.get("deepspeed_multinode_launcher")
        if launcher is not None and launcher not in DEEPSPEED_MULTINODE_LAUNCHERS:
            fail("deepspeed_multinode_launcher",
                 f"unknown value {launcher!r}{_suggest(str(launcher), DEEPSPEED_MULTINODE_LAUNCHERS)}")  # fmt: skip

    def _detail(self, distributed: str) -> str:
        tree = self.tree
        if distributed == "FSDP":
            fsdp = {(k if str(k).startswith("fsdp_") else f"fsdp_{k}"): v for k, v in tree["fsdp_config"].items()}
            version = int(fsdp.get("fsdp_version", 1))
            if version == 1:
                strategy = fsdp.get("fsdp_reshard_after_forward") or fsdp.get("fsdp_sharding_strategy") or "FULL_SHARD"
            else:
                strategy = "full shard" if fsdp.get("fsdp_reshard_after_forward", True) else "shard grad+optimizer"
            return f"FSDP{version} {strategy}"
        if distributed == "DEEPSPEED":
            stage = tree["deepspeed_config"].get("zero_stage")
            return f"DeepSpeed ZeRO-{stage}" if stage is not None else "DeepSpeed (JSON config file)"
        if distributed == "MULTI_GPU":
            return "DDP (MULTI_GPU)"
        return "single process" if distributed == "NO" else str(distributed)


def validate_accelerate_config(path: str | Path) -> str:
    """Check an accelerate config file completely; return a one-line summary.

    Args:
        path: The YAML file (what ``accelerate launch --config_file`` takes).

    Returns:
        e.g. ``"accelerate config: FSDP1 FULL_SHARD, 8 processes, bf16"``.

    Raises:
        ConfigError: naming the file, the key path and the line of the first problem.
    """
    file = Path(path)
    try:
        display = str(file.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        display = str(file)
    tree = load_yaml(file, display)
    if not isinstance(tree, SourcedDict):
        raise ConfigError(
            display, "", "an accelerate config must be a mapping with distributed_type, num_processes, ..."
        )
    return _Checker(tree, display).run()
