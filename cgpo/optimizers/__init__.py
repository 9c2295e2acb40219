"""Per-task optimizers: CGPO's CRPG, CRRAFT and CODPO, and the unconstrained baselines.

Each optimizer is a pure loss over the tensors of one task's rollout (:class:`PolicyBatch`), registered
by name in :data:`OPTIMIZERS` through the ``cgpo.optimizers`` entry-point group, like judges.
"""

from cgpo.optimizers.base import OPTIMIZERS, LossOutput, Optimizer, PolicyBatch

__all__ = ["OPTIMIZERS", "LossOutput", "Optimizer", "PolicyBatch"]
