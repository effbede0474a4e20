"""Fused kernels and their plain-PyTorch twins.

Every op here has a reference implementation in plain PyTorch with the same signature; the
reference is also the CPU path. Triton implementations register themselves on the same op and are
picked by :mod:`kernels.dispatch` (``ZOO_KERNELS=auto|torch|triton``).
"""
from .dispatch import KernelOp, available, kernel_mode, kernel_op
from .channel_pool import pool_mean, pool_weighted
from .channel_scale import channel_scale

__all__ = [
    "KernelOp",
    "available",
    "kernel_mode",
    "kernel_op",
    "pool_mean",
    "pool_weighted",
    "channel_scale",
]
