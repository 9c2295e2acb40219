"""Model references in configs.

``tiny:policy`` / ``tiny:reward`` name the embedded tiny default; ``smollm2:135m-instruct`` a real model
obtained from the package index and converted once (:mod:`cgpo.model_sources`); anything else is a local
directory or a hub id handed to ``from_pretrained`` unchanged (offline, so it must be cached).
"""

from __future__ import annotations

from collections.abc import Callable

from cgpo.config import TINY_PREFIX


def resolve_model_path(path: str, *, log: Callable[[str], None] = print) -> str:
    """The directory or hub id to load for a config's model ``path`` (named sources obtained on first use).

    ``smollm2:*`` is downloaded and converted once; ``tiny:*`` is the shipped (or a local) build; anything
    else is returned unchanged.

    Raises:
        UserError: an unknown named source, or one that cannot be obtained (no package index, bad sha256).
    """
    from cgpo.model_sources import is_named_source, resolve_named_model

    if is_named_source(path):
        return resolve_named_model(path, log=log)
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
