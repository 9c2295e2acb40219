"""cgpo: multi-task alignment of language models under hard constraints.

Implements CGPO (Xu et al., "The Perfect Blend: Redefining RLHF with Mixture of Judges", arXiv 2409.20370)
and RAFT (Dong et al., arXiv 2304.06767): prompts are split into tasks, each with its own reward model,
mixture of judges and constrained optimizer (CRPG, CRRAFT or CODPO), and the per-task gradients are
accumulated with task weights into one update.

Importing this package is cheap on purpose: torch, transformers, trl and sympy are imported only by the
modules that need them, so ``cgpo --help`` and ``cgpo validate`` start fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
