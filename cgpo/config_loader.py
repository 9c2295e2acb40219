"""Loading task YAMLs and run configs into :mod:`cgpo.config` dataclasses, with located errors.

The steps, for a run config: read the YAML into Sourced containers (:mod:`cgpo.yamlio`); replace each
``tasks`` entry by its task file's content (``include:`` bases merged under it); apply ``key.path=value``
overrides; expand shorthands (``optimizer: crpg``, ``judges: [math]``, ``metadata_fields: [a, b]``);
make data paths absolute relative to the file that wrote them; build the frozen dataclasses strictly;
then resolve judge, optimizer and reward-function names and validate their params, and check that data
files exist. Any failure becomes a :class:`cgpo.errors.ConfigError` naming the file, the key path inside
that file and the line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from cgpo.config import DataSource, RunConfig, TaskConfig
from cgpo.errors import ConfigError
from cgpo.schema import KeyPath, SchemaError, build
from cgpo.yamlio import SourcedDict, SourcedList, load_yaml, locate, set_override


def _display(path: Path) -> str:
    """A path as users like to read it: relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _merge(base: Any, top: Any) -> Any:
    """Deep-merge two YAML trees (``top`` wins; lists are replaced), keeping each key's origin."""
    if not (isinstance(base, Mapping) and isinstance(top, Mapping)):
        return top
    merged = SourcedDict()
    merged.origin = getattr(top, "origin", None) or getattr(base, "origin", None)
    for source in (base, top):
        for key, value in source.items():
            merged[key] = _merge(merged[key], value) if key in merged and source is top else value
            origin = getattr(source, "origins", {}).get(key)
            if origin is not None:
                merged.origins[key] = origin
    return merged


def _resolve_include(entry: SourcedDict, file: Path, stack: tuple[Path, ...]) -> SourcedDict:
    """Replace ``include: base.yaml`` in ``entry`` by the base file's content, with ``entry`` on top."""
    include = entry.get("include")
    if include is None:
        return entry
    origin = entry.origins.get("include")
    where = (
        (origin.file, ".".join(map(str, origin.path)), origin.line) if origin else (_display(file), "include", None)
    )
    if not isinstance(include, str):
        raise ConfigError(where[0], where[1], "must be a path to a YAML file", where[2])
    target = (file.parent / include).resolve()
    if target in stack:
        raise ConfigError(
            where[0], where[1], f"include cycle: {' -> '.join(_display(p) for p in (*stack, target))}", where[2]
        )
    if not target.is_file():
        raise ConfigError(
            where[0], where[1], f"included file '{include}' not found (looked for {_display(target)})", where[2]
        )
    base = load_yaml(target, _display(target))
    if not isinstance(base, SourcedDict):
        raise ConfigError(_display(target), "", "must be a mapping (a task)")
    base = _resolve_include(base, target, (*stack, target))
    top = SourcedDict({k: v for k, v in entry.items() if k != "include"})
    top.origins = {k: v for k, v in entry.origins.items() if k != "include"}
    top.origin = entry.origin
    merged: SourcedDict = _merge(_without_replaced_blocks(base, top), top)
    merged.origin = base.origin  # the task's own file is where its keys live
    return merged


#: The reward keys that belong to one implementation and go with it when an include switches to the other.
_IMPLEMENTATION_KEYS = {"model": ("dtype", "append_eos", "chat_template"), "function": ("params",)}


def _without_replaced_blocks(base: SourcedDict, top: Mapping[str, Any]) -> SourcedDict:
    """``base`` minus the parts that ``top`` replaces rather than refines.

    Deep-merging is right for tweaks (``sampling: {temperature: 0.7}``) but wrong when the including file
    switches implementation: ``optimizer: {name: raft}`` must not inherit the base's CODPO ``params``, and
    ``reward: {function: ...}`` must not keep the base's ``model`` (the merged task would have both). Such a
    block is taken whole from ``top``.
    """
    out = SourcedDict(base)
    out.origins, out.origin = dict(base.origins), base.origin
    base_opt, top_opt = base.get("optimizer"), top.get("optimizer")
    if (
        isinstance(base_opt, Mapping)
        and isinstance(top_opt, Mapping)
        and "name" in top_opt
        and top_opt["name"] != base_opt.get("name")
    ):
        del out["optimizer"]
    base_reward, top_reward = base.get("reward"), top.get("reward")
    if isinstance(base_reward, SourcedDict) and isinstance(top_reward, Mapping):
        for kind, other in (("model", "function"), ("function", "model")):
            if top_reward.get(kind) is not None and base_reward.get(other) is not None:
                # The base's implementation and its settings go; its calibration settings stay.
                dropped = {other, *_IMPLEMENTATION_KEYS[other]}
                trimmed = SourcedDict({k: v for k, v in base_reward.items() if k not in dropped})
                trimmed.origins = {k: v for k, v in base_reward.origins.items() if k in trimmed}
                trimmed.origin = base_reward.origin
                out["reward"] = trimmed
    return out


def _resolve_data_paths(task: Any) -> None:
    """Make ``prompts.{train,eval}.path`` absolute, relative to the file that wrote each path."""
    prompts = task.get("prompts") if isinstance(task, Mapping) else None
    if not isinstance(prompts, Mapping):
        return
    for split in ("train", "eval"):
        source = prompts.get(split)
        if isinstance(source, SourcedDict) and isinstance(source.get("path"), str):
            origin = source.origins.get("path")
            base = Path(origin.file).parent if origin and origin.file and not origin.file.startswith("<") else Path()
            source["path"] = str((base / source["path"]).expanduser().resolve())


def _normalize_task(task: Any) -> None:
    """Expand shorthands in place: ``judges: [math]``, ``optimizer: crpg``, ``metadata_fields: [a, b]``."""
    if not isinstance(task, SourcedDict):
        return
    judges = task.get("judges")
    if isinstance(judges, SourcedList):
        for i, spec in enumerate(judges):
            if isinstance(spec, str):
                entry = SourcedDict(name=spec)
                entry.origin = judges.origins[i]
                if entry.origin:
                    entry.origins["name"] = entry.origin
                judges[i] = entry
    optimizer = task.get("optimizer")
    if isinstance(optimizer, str):
        entry = SourcedDict(name=optimizer)
        entry.origin = task.origins.get("optimizer")
        if entry.origin:
            entry.origins["name"] = entry.origin
        task["optimizer"] = entry
    prompts = task.get("prompts")
    if isinstance(prompts, SourcedDict) and isinstance(prompts.get("metadata_fields"), list):
        names = prompts["metadata_fields"]
        if all(isinstance(n, str) for n in names):
            mapping = SourcedDict({n: n for n in names})
            mapping.origin = prompts.origins.get("metadata_fields")
            mapping.origins = {n: o for n, o in zip(names, getattr(names, "origins", []), strict=False) if o}
            prompts["metadata_fields"] = mapping
    if task.get("reward") is None and "reward" in task:
        task["reward"] = SourcedDict()


def _parse_params(plugin: Any, params: dict[str, Any], path: KeyPath) -> None:
    """Validate ``params`` with the plugin's own ``parse_params``; a plugin's plain ValueError is located too."""
    try:
        plugin.parse_params(params, path)
    except SchemaError:
        raise
    except (ValueError, TypeError) as exc:
        raise SchemaError(path, f"{exc}") from None


def _check_plugins(task: TaskConfig, path: KeyPath) -> None:
    """Resolve judge, optimizer and reward-function names and validate their params (imports their modules)."""
    from cgpo.judging import JUDGES
    from cgpo.optimizers import OPTIMIZERS
    from cgpo.registry import RegistryError
    from cgpo.rewards import REWARD_FUNCTIONS

    for i, spec in enumerate(task.judges):
        try:
            judge_cls = JUDGES.get(spec.name)
        except RegistryError as exc:
            raise SchemaError((*path, "judges", i, "name"), str(exc)) from None
        _parse_params(judge_cls, spec.params, (*path, "judges", i, "params"))
    try:
        optimizer_cls = OPTIMIZERS.get(task.optimizer.name)
    except RegistryError as exc:
        raise SchemaError((*path, "optimizer", "name"), str(exc)) from None
    _parse_params(optimizer_cls, task.optimizer.params, (*path, "optimizer", "params"))
    if task.sampling.num_samples < optimizer_cls.min_samples:
        raise SchemaError(
            (*path, "sampling", "num_samples"),
            f"{task.optimizer.name} needs at least {optimizer_cls.min_samples} samples per prompt, got "
            f"{task.sampling.num_samples}",
        )
    if optimizer_cls.uses_kl_threshold and task.kl_threshold is None:
        raise SchemaError((*path, "kl_threshold"), f"{task.optimizer.name} needs a KL threshold (KL_max), e.g. 10.0")
    if not optimizer_cls.uses_kl_threshold and task.kl_threshold is not None:
        # A key the optimizer never reads is refused rather than accepted silently: a user who sets a KL
        # bound on CODPO believes the run is KL-bounded when it is not (its drift is set by beta).
        raise SchemaError(
            (*path, "kl_threshold"),
            f"{task.optimizer.name} does not read kl_threshold (only optimizers that bound the per-sample KL, "
            "such as crpg and crraft, do); remove it, or set it to null where it comes from an included task",
        )
    if task.sampler is not None and not optimizer_cls.accepts_off_policy_samples:
        raise SchemaError(
            (*path, "sampler"),
            f"{task.optimizer.name} cannot train on another model's samples (its loss assumes the policy sampled "
            "them; an off-policy estimate would need importance weights a teacher with another tokenizer cannot "
            "give); use optimizer raft or crraft with a sampler, or remove the sampler",
        )
    if task.reward.function is not None:
        try:
            reward_cls = REWARD_FUNCTIONS.get(task.reward.function)
        except RegistryError as exc:
            raise SchemaError((*path, "reward", "function"), str(exc)) from None
        _parse_params(reward_cls, task.reward.params, (*path, "reward", "params"))


def _check_data_files(task: TaskConfig, path: KeyPath) -> None:
    for split in ("train", "eval"):
        source: DataSource | None = getattr(task.prompts, split)
        if source is not None and source.path is not None and not Path(source.path).is_file():
            raise SchemaError((*path, "prompts", split, "path"), f"data file not found: {source.path}")


def _build_task(tree: Any, path: KeyPath, *, check_plugins: bool) -> TaskConfig:
    task = build(TaskConfig, tree, path)
    _check_data_files(task, path)
    if check_plugins:
        _check_plugins(task, path)
    return task


def _raise_located(exc: SchemaError, tree: Any, default_file: str) -> None:
    file, key_path, line = locate(tree, exc.path, default_file)
    raise ConfigError(file, key_path, exc.reason, line) from None


def load_task_config(path: str | Path, overrides: Sequence[str] = (), *, check_plugins: bool = True) -> TaskConfig:
    """Load and validate one task YAML.

    Args:
        path: The task file.
        overrides: ``key.path=value`` strings applied after loading.
        check_plugins: Resolve judge/optimizer/reward names and validate their params (imports plugins).

    Raises:
        ConfigError: naming the file, key path and line of the first problem.
    """
    file = Path(path)
    display = _display(file)
    tree = load_yaml(file, display)
    if not isinstance(tree, SourcedDict):
        raise ConfigError(
            display, "", "a task file must be a mapping of keys such as name, prompts, judges, optimizer"
        )
    tree = _resolve_include(tree, file.resolve(), (file.resolve(),))
    for item in overrides:
        set_override(tree, *_split_override(item))
    _normalize_task(tree)
    _resolve_data_paths(tree)
    try:
        return _build_task(tree, (), check_plugins=check_plugins)
    except SchemaError as exc:
        _raise_located(exc, tree, display)
        raise  # unreachable: _raise_located always raises


def _split_override(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep:
        raise ConfigError("<command line>", key, f"override '{item}' must look like key.path=value")
    return key.strip(), value


def _load_task_entries(tree: SourcedDict, file: Path, display: str) -> None:
    """Replace each ``tasks`` entry (a path, ``{include: path, ...}`` or an inline task) by its mapping."""
    tasks = tree.get("tasks")
    if not isinstance(tasks, list):
        return
    # A list given by an override (tasks=[a.yaml, b.yaml]) carries no origins: it comes from the command line.
    origins = tasks.origins if isinstance(tasks, SourcedList) else [tree.origins.get("tasks")] * len(tasks)
    for i, entry in enumerate(tasks):
        if isinstance(entry, str):
            entry = SourcedDict(include=entry)
        elif isinstance(entry, dict) and not isinstance(entry, SourcedDict):
            entry = SourcedDict(entry)
        if isinstance(entry, SourcedDict):
            if entry.origin is None:
                entry.origin = origins[i]
            if "include" in entry and "include" not in entry.origins and entry.origin:
                entry.origins["include"] = entry.origin
            tasks[i] = _resolve_include(entry, file.resolve(), (file.resolve(),))


def load_run_config(path: str | Path, overrides: Sequence[str] = (), *, check_plugins: bool = True) -> RunConfig:
    """Load and validate a run config with its tasks.

    Args:
        path: The run config file.
        overrides: ``key.path=value`` strings (``training.max_steps=5``, ``tasks.0.weight=2``), applied after
            the task files are read, so they can reach into tasks.
        check_plugins: Resolve judge/optimizer/reward names and validate their params (imports plugins).

    Raises:
        ConfigError: naming the file, key path and line of the first problem.
    """
    file = Path(path)
    display = _display(file)
    tree = load_yaml(file, display)
    if not isinstance(tree, SourcedDict):
        raise ConfigError(display, "", "a run config must be a mapping with policy, tasks, training and output_dir")
    _load_task_entries(tree, file, display)
    for item in overrides:
        set_override(tree, *_split_override(item))
    _load_task_entries(tree, file, display)  # an override may name a task file (tasks.2=path/task.yaml)
    tasks = tree.get("tasks")
    if isinstance(tasks, list):
        for task in tasks:
            _normalize_task(task)
            _resolve_data_paths(task)
    try:
        config = build(RunConfig, tree)
        for i, task in enumerate(config.tasks):
            _check_data_files(task, ("tasks", i))
            if check_plugins:
                _check_plugins(task, ("tasks", i))
    except SchemaError as exc:
        _raise_located(exc, tree, display)
        raise
    return config


def detect_kind(path: str | Path) -> Literal["run", "task", "accelerate"]:
    """Whether a YAML file is a run config, a task, or an accelerate config.

    A run config has ``tasks`` or ``policy``; an accelerate config (``accelerate launch --config_file``) has
    ``distributed_type`` or ``compute_environment`` at the top level (:mod:`cgpo.accelerate_config`); any
    other file is read as a task.
    """
    from cgpo.accelerate_config import ACCELERATE_MARKERS

    file = Path(path)
    tree = load_yaml(file, _display(file))
    if isinstance(tree, Mapping) and ("tasks" in tree or "policy" in tree):
        return "run"
    if isinstance(tree, Mapping) and ACCELERATE_MARKERS & set(tree):
        return "accelerate"
    return "task"
