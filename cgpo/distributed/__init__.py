"""Distributed training beyond DDP.

FSDP2 sharding of the policy (:mod:`cgpo.distributed.fsdp`) and its sharded checkpoints
(:mod:`cgpo.distributed.checkpoint`), and how a distributed process ends (:mod:`cgpo.distributed.shutdown`).
"""
