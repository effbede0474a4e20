"""Shrinking modules to kept channels, and replaying a saved record of it on a fresh model.

Every module kind pruning can shrink registers, per dimension, a :class:`Cut`: the tensors (and
their axis) that hold that dimension, and the int attributes that state it (``out_channels``). One
table serves three jobs: removing channels (:func:`shrink`), rebuilding a pruned model from its
saved widths (:func:`apply_record`, called by the builder before its strict load), and telling
importance criteria and the cost model which weights a channel owns. A module kind missing from the
table is refused with its name, never shrunk half.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from zoo.blocks.ca import ChannelAttention
from zoo.blocks.eca import EfficientChannelAttention
from zoo.blocks.fca import MultiSpectralAttention, shared_filter_groups
from zoo.blocks.han import ChannelSpatialAttention, LayerAttention
from zoo.blocks.moc_ffn import MoCFFN, SwiGLU
from zoo.blocks.se import SqueezeExcite

__all__ = ["Cut", "SHRINKERS", "register_shrinker", "cut_of", "dim_size", "shrink", "apply_record",
           "check_record", "ATTR_PREFIX"]

ATTR_PREFIX = "attr:"  # a member dimension that is an int attribute of the module, set to the new width


@dataclass(frozen=True)
class Cut:
    """What one dimension of a module is made of.

    Args:
        axes: (tensor path inside the module, axis): every parameter or buffer slice the channels own.
        attrs: dotted int attributes that hold the width (``fc1.in_channels``, ``channels``).
        after: a fix-up once the tensors are cut (FcaNet re-derives its DCT frequency groups).
    """

    axes: tuple[tuple[str, int], ...] = ()
    attrs: tuple[str, ...] = ()
    after: Callable[[nn.Module], None] | None = None


# module type -> {dimension name -> the module's Cut for it}
SHRINKERS: dict[type, dict[str, Callable[[nn.Module], Cut]]] = {}


def register_shrinker(module_type: type, **dims: Callable[[nn.Module], Cut]) -> None:
    """Declare how ``module_type`` shrinks: one function per dimension name, returning its :class:`Cut`."""
    SHRINKERS[module_type] = dims


def _conv_out(m: nn.Conv2d) -> Cut:
    _plain_conv(m)
    return Cut((("weight", 0), ("bias", 0)), ("out_channels",))


def _conv_in(m: nn.Conv2d) -> Cut:
    _plain_conv(m)
    return Cut((("weight", 1),), ("in_channels",))


def _conv_depthwise(m: nn.Conv2d) -> Cut:
    if not (m.groups == m.in_channels == m.out_channels):
        raise ValueError(f"a depthwise member needs groups == in_channels == out_channels; this conv has groups="
                         f"{m.groups}, in {m.in_channels}, out {m.out_channels}: declare it with 'in' / 'out'")
    return Cut((("weight", 0), ("bias", 0)), ("out_channels", "in_channels", "groups"))


def _plain_conv(m: nn.Conv2d) -> None:
    if m.groups != 1:
        raise ValueError(f"a grouped conv (groups={m.groups}) cannot lose single input or output channels: its "
                         f"groups would no longer divide them; declare a depthwise conv with dim 'channels'")


def _norm(m: nn.Module) -> Cut:
    return Cut((("weight", 0), ("bias", 0), ("running_mean", 0), ("running_var", 0)), ("num_features",))


def _layer_norm(m: nn.LayerNorm) -> Cut:
    if len(m.normalized_shape) != 1:
        raise ValueError(f"a LayerNorm over {tuple(m.normalized_shape)} cannot lose channels; only one normalized "
                         f"dimension can")
    return Cut((("weight", 0), ("bias", 0)), ())


def _layer_norm_after(m: nn.LayerNorm) -> None:
    m.normalized_shape = (m.weight.shape[0],) if m.weight is not None else m.normalized_shape


register_shrinker(nn.Conv2d, out=_conv_out, **{"in": _conv_in}, channels=_conv_depthwise)
register_shrinker(nn.Linear, out=lambda m: Cut((("weight", 0), ("bias", 0)), ("out_features",)),
                  **{"in": lambda m: Cut((("weight", 1),), ("in_features",))})
register_shrinker(nn.BatchNorm2d, channels=_norm)
register_shrinker(nn.BatchNorm1d, channels=_norm)
register_shrinker(nn.LayerNorm, channels=lambda m: Cut(_layer_norm(m).axes, (), _layer_norm_after))

# the channel-attention blocks: the gated channels (the excitation's input and output) and the
# squeeze width between its two layers, ``reduce`` and ``expand`` (each a conv or linear with a bias)
def register_excitation(module_type: type, reduce: str, expand: str) -> None:
    register_shrinker(
        module_type,
        channels=lambda m: Cut(((f"{reduce}.weight", 1), (f"{expand}.weight", 0), (f"{expand}.bias", 0)),
                               ("channels", f"{reduce}.in_channels", f"{expand}.out_channels")),
        hidden=lambda m: Cut(((f"{reduce}.weight", 0), (f"{reduce}.bias", 0), (f"{expand}.weight", 1)),
                             (f"{reduce}.out_channels", f"{expand}.in_channels")))


register_excitation(SqueezeExcite, "fc1", "fc2")
register_excitation(ChannelAttention, "conv_du.0", "conv_du.2")


def _fca_regroup(m: MultiSpectralAttention) -> None:
    # each kept channel keeps its own DCT basis (its row of the buffer), so the frequency groups are
    # re-derived from the rows: equal runs pool through shared filters, anything else channel by channel
    m.dct_layer.groups = shared_filter_groups(m.dct_layer.weight, m.dct_layer.frequencies)


register_shrinker(
    MultiSpectralAttention,
    channels=lambda m: Cut((("dct_layer.weight", 0), ("fc.0.weight", 1), ("fc.2.weight", 0)),
                           ("channels", "fc.0.in_features", "fc.2.out_features"), _fca_regroup),
    hidden=lambda m: Cut((("fc.0.weight", 0), ("fc.2.weight", 1)), ("fc.0.out_features", "fc.2.in_features")))
_SWIGLU_HIDDEN = Cut((("gate_proj.weight", 0), ("up_proj.weight", 0), ("down_proj.weight", 1)),
                     ("hidden_dim", "gate_proj.out_features", "up_proj.out_features", "down_proj.in_features"))


def _moc_hidden(m: MoCFFN) -> Cut:
    dense, top_k = m.is_dense, m.top_k

    def after(m: MoCFFN) -> None:
        # a dense FFN stays dense; a sparse one keeps its K unless fewer channels are left
        m.top_k = m.hidden_dim if dense else min(top_k, m.hidden_dim)
        m._down_t = m._down_t_int = None  # the transposed copies of the old down projection
    return Cut(_SWIGLU_HIDDEN.axes, _SWIGLU_HIDDEN.attrs, after)


register_shrinker(SwiGLU, hidden=lambda m: _SWIGLU_HIDDEN)
register_shrinker(MoCFFN, hidden=_moc_hidden)
# blocks whose weights do not depend on the channel count: only the count they check inputs against
for _kind in (EfficientChannelAttention, ChannelSpatialAttention, LayerAttention):
    register_shrinker(_kind, channels=lambda m: Cut((), ("channels",)))


def cut_of(module: nn.Module, dim: str, name: str = "") -> Cut:
    """The :class:`Cut` of ``module`` along ``dim``; a module kind or dimension pruning does not know is
    refused with one sentence naming it."""
    if dim.startswith(ATTR_PREFIX):
        attr = dim[len(ATTR_PREFIX):]
        if not isinstance(getattr(module, attr, None), int):
            raise ValueError(f"pruning member {name or type(module).__name__!r} names {dim!r}, but the module has "
                             f"no int attribute {attr!r}")
        return Cut((), (attr,))
    for kind in type(module).__mro__:
        if kind in SHRINKERS:
            dims = SHRINKERS[kind]
            if dim not in dims:
                raise ValueError(f"{type(module).__name__} {name!r} has no prunable dimension {dim!r}; it has "
                                 f"{', '.join(map(repr, dims))}")
            return dims[dim](module)
    raise TypeError(f"pruning cannot shrink {type(module).__name__} ({name!r}): no shrinker is registered for that "
                    f"layer kind (zoo.pruning.replay.register_shrinker adds one); prune the float model before any "
                    f"quantization, or leave this layer out of the pruned groups")


def _resolve(module: nn.Module, path: str) -> tuple[nn.Module, str]:
    owner_path, _, leaf = path.rpartition(".")
    return (module.get_submodule(owner_path) if owner_path else module), leaf


def dim_size(module: nn.Module, dim: str, name: str = "") -> int:
    """The current width of ``module`` along ``dim``."""
    cut = cut_of(module, dim, name)
    for path, axis in cut.axes:
        owner, leaf = _resolve(module, path)
        tensor = getattr(owner, leaf, None)
        if tensor is not None:
            return tensor.shape[axis]
    owner, leaf = _resolve(module, cut.attrs[0])
    return int(getattr(owner, leaf))


def shrink(module: nn.Module, dim: str, keep: torch.Tensor, name: str = "") -> None:
    """Keep only indices ``keep`` (sorted, int64) of ``module`` along ``dim``, in place."""
    cut = cut_of(module, dim, name)
    for path, axis in cut.axes:
        owner, leaf = _resolve(module, path)
        tensor = getattr(owner, leaf, None)
        if tensor is None:  # a bias-free layer, a norm without running stats
            continue
        cut_tensor = tensor.detach().index_select(axis, keep.to(tensor.device)).clone()
        if isinstance(tensor, nn.Parameter):
            setattr(owner, leaf, nn.Parameter(cut_tensor, requires_grad=tensor.requires_grad))
        else:
            owner._buffers[leaf] = cut_tensor
    for attr in cut.attrs:
        owner, leaf = _resolve(module, attr)
        setattr(owner, leaf, int(keep.numel()))
    if cut.after is not None:
        cut.after(module)


def check_record(model: nn.Module, record: Mapping, where: str = "the pruning record") -> None:
    """Refuse a record that does not fit ``model`` (a module it lacks, a dimension it cannot shrink, a width
    that would grow a layer), before anything is changed."""
    if not isinstance(record, Mapping):
        raise ValueError(f"{where} must map module names to {{dimension: width}}; got a {type(record).__name__}")
    modules = dict(model.named_modules())
    for name, dims in record.items():
        if name not in modules:
            raise ValueError(f"{where} names module {name!r}, which {type(model).__name__} lacks: the folder was "
                             f"saved from another architecture or other model arguments")
        if not isinstance(dims, Mapping):
            raise ValueError(f"{where}: the entry of {name!r} must map dimensions to widths; got {dims!r}")
        for dim, width in dims.items():
            full = dim_size(modules[name], dim, name)
            if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= full:
                raise ValueError(f"{where}: {name!r} {dim} width must be an int in 1..{full}; got {width!r}")


def apply_record(model: nn.Module, record: Mapping) -> nn.Module:
    """Shrink a freshly built ``model`` to the widths ``record`` holds (``{module: {dim: width}}``) so the
    pruned model's state dict loads into it strictly. Which channels were kept does not matter here: the
    weights that follow fill the shrunk tensors."""
    check_record(model, record)
    modules = dict(model.named_modules())
    for name, dims in record.items():
        for dim, width in dims.items():
            shrink(modules[name], dim, torch.arange(width), name)
    model.prune_record = {name: dict(dims) for name, dims in record.items()}
    return model
