"""Reusable channel- and scale-centred blocks with a registry.

>>> import blocks
>>> se = blocks.create("se", 256, rd_ratio=1 / 16)
>>> blocks.list_blocks("*")
['ca', 'csam', 'eca', 'fca', 'lam', 'se']

Every block takes its channel count first, accepts ``device`` and ``dtype``, and calls
:mod:`kernels` for its hot path.
"""
from .registry import create, get_block, list_blocks, register
from .gate import ChannelGate
from .layers import DropPath, create_act, make_divisible
from .se import SqueezeExcite
from .eca import EfficientChannelAttention
from .fca import MultiSpectralAttention
from .ca import ChannelAttention
from .han import ChannelSpatialAttention, LayerAttention
from .channel_vit import ChannelPatchEmbed, HierarchicalChannelSampler

__all__ = [
    "create",
    "get_block",
    "list_blocks",
    "register",
    "ChannelGate",
    "DropPath",
    "create_act",
    "make_divisible",
    "SqueezeExcite",
    "EfficientChannelAttention",
    "MultiSpectralAttention",
    "ChannelAttention",
    "LayerAttention",
    "ChannelSpatialAttention",
]
