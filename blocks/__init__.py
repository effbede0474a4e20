"""Reusable channel- and scale-centred blocks with a registry.

>>> from zoo import blocks
>>> se = blocks.create("se", 256, rd_ratio=1 / 16)
>>> blocks.list_blocks("*")
['adaln_attn_block', 'adaln_before_head', 'ca', 'channel_patch_embed', 'csam', 'eca', 'fca', 'hcs_sampler', 'lam', 'moc_ffn', 'se', 'swiglu']

Every block takes its channel count first, accepts ``device`` and ``dtype``, and calls
:mod:`zoo.kernels` for its hot path.
"""
if __name__ != "zoo.blocks":  # the repository's blocks/ folder installs as zoo.blocks (pyproject.toml)
    raise ImportError(f"import zoo.blocks, not {__name__}: the folder blocks/ is installed as zoo.blocks "
                      "(pip install -e . in the checkout)")

from timm.layers import DropPath, make_divisible  # timm's, kept under these names for callers of zoo.blocks

from .registry import create, get_block, list_blocks, register
from .gate import ChannelGate
from .layers import create_act
from .se import SqueezeExcite
from .eca import EfficientChannelAttention
from .fca import MultiSpectralAttention
from .ca import ChannelAttention
from .han import ChannelSpatialAttention, LayerAttention
from .channel_vit import ChannelPatchEmbed, HierarchicalChannelSampler
from .adaln_attn import AdaLNBeforeHead, AdaLNSelfAttn
from .moc_ffn import MoCFFN, SwiGLU
from .quant_spec import QuantSpec

__all__ = [
    "QuantSpec",
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
    "ChannelPatchEmbed",
    "HierarchicalChannelSampler",
    "AdaLNSelfAttn",
    "AdaLNBeforeHead",
    "MoCFFN",
    "SwiGLU",
]
