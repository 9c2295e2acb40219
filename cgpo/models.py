"""Model references in configs.

``tiny:policy`` / ``tiny:reward`` name the embedded tiny default; anything else is a local directory or a
hub id handed to ``from_pretrained`` unchanged (offline, so it must be cached).
"""

from __future__ import annotations

from collections.abc import Callable

from cgpo.config import TINY_PREFIX


def resolve_model_path(path: str, *, log: Callable[[str], None] = print) -> str:
    """The directory or hub id to load for a config's model ``path`` (the tiny models: shipped, or built)."""
    if not path.startswith(TINY_PREFIX):
        return path
    from cgpo.tiny.embedded import tiny_models

    return str(tiny_models(log=log) / path[len(TINY_PREFIX) :])


def quiet_library_progress_bars() -> None:
    """Turn off the per-file progress bars of transformers and datasets: a run prints its own progress."""
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
