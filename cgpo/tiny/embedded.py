"""The tiny models shipped inside the package, so that a first run loads them in seconds.

``tiny:policy`` and ``tiny:reward`` resolve, in this order, to

1. ``$CGPO_HOME/tiny/<recipe id>/``: a local build (``cgpo bootstrap --rebuild`` writes one);
2. ``cgpo/tiny/assets/<recipe id>/``: the build shipped with the package (tokenizer, policy and reward model
   as safetensors, about 6 MB, and the build report ``build.json``);
3. a build now (:func:`cgpo.tiny.build.ensure_tiny_models`), when neither exists: the recipe or the builder's
   code changed, so its id no longer names the shipped files.

The recipe id hashes the builder's source (:meth:`cgpo.tiny.build.TinyRecipe.identity`), so a shipped copy is
used only for exactly the code and recipe that built it. A rebuild is deterministic for a seed on one kind of
CPU and torch build; across CPUs the floating-point order may differ, so a rebuild elsewhere matches the
shipped models' quality (``tests/tiny/test_embedded.py``), not their bits.

This module is kept apart from :mod:`cgpo.tiny.build` on purpose: its source is not part of the recipe id.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cgpo.tiny.build import DEFAULT_RECIPE, TinyRecipe, ensure_tiny_models, is_built, tiny_models_dir

ASSETS = Path(__file__).resolve().parent / "assets"


def shipped_models_dir(recipe: TinyRecipe = DEFAULT_RECIPE) -> Path | None:
    """The shipped build of ``recipe``, or None when the package holds none for its id."""
    folder = ASSETS / recipe.identity()
    return folder if is_built(folder) else None


def tiny_models(
    recipe: TinyRecipe = DEFAULT_RECIPE, *, log: Callable[[str], None] = print, rebuild: bool = False
) -> Path:
    """The folder holding ``policy/`` and ``reward/`` of ``recipe``: a local build, the shipped one, or a new build."""
    if not rebuild:
        if is_built(tiny_models_dir(recipe)):
            return tiny_models_dir(recipe)
        shipped = shipped_models_dir(recipe)
        if shipped is not None:
            return shipped
    return ensure_tiny_models(recipe, log=log, rebuild=rebuild)
