"""Small shared layers: activations by name, stochastic depth, fused pointwise gates, and the max-pool and
pixel shuffle with faster CPU inference."""
from __future__ import annotations

import math
from typing import Callable, Union

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from zoo import kernels
from zoo.kernels.dispatch import eager_inference

from .fusion import can_fuse
from .validation import symbolic_tracing, unknown_name_error

LayerType = Union[str, type[nn.Module], Callable[[], nn.Module], None]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "silu": lambda: nn.SiLU(inplace=True),
    "swish": lambda: nn.SiLU(inplace=True),
    "gelu": nn.GELU,
    "hard_swish": nn.Hardswish,
    "sigmoid": nn.Sigmoid,
    "hard_sigmoid": nn.Hardsigmoid,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


def create_act(layer: LayerType) -> nn.Module:
    """An activation module from a name (``'relu'``), a class, or a factory; None is identity."""
    if layer is None:
        return nn.Identity()
    if isinstance(layer, str):
        if layer not in _ACTIVATIONS:
            raise unknown_name_error("activation", layer, _ACTIVATIONS)
        return _ACTIVATIONS[layer]()
    return layer()


def is_sigmoid(layer: LayerType) -> bool:
    return layer in ("sigmoid", nn.Sigmoid)


def eca_kernel_size(channels: int, gamma: float = 2.0, beta: float = 1.0) -> int:
    """ECA-Net's adaptive kernel size: k = |log2(C)/gamma + beta/gamma|, rounded to the odd below."""
    t = int(abs((math.log2(channels) + beta) / gamma))
    return t if t % 2 else t + 1


def stochastic_depth(rate: float) -> nn.Module:
    """timm's ``DropPath`` (stochastic depth, Huang et al., ECCV 2016) for a residual branch, or identity
    at rate 0. A rate outside [0, 1) is refused here: timm's layer takes 1 (the branch always dropped)
    and fails inside ``bernoulli_`` past it."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path rate must be in [0, 1); got {rate}")
    return DropPath(rate) if rate > 0 else nn.Identity()


def _cpu_inference_nchw(x: torch.Tensor) -> bool:
    """An NCHW CPU tensor in eager inference: where the layers below replace PyTorch's scalar NCHW kernels.
    Training, tracing and compiling keep the stock op (one graph node; the compiler picks its own kernel)."""
    return (type(x) is torch.Tensor and x.device.type == "cpu" and x.ndim == 4 and x.is_contiguous()
            and not torch.jit.is_tracing() and eager_inference(x))


def channels_last_inference(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``forward(x)``, run on a channels-last copy of ``x`` and returned NCHW when ``x`` is an NCHW CPU map
    and no gradient is recorded (``torch.no_grad`` / ``torch.inference_mode``); ``forward(x)`` otherwise.

    For a network of narrow convolutions on large maps (an SR trunk). oneDNN's NCHW fp32 convolutions on
    the CPU run a width between two multiples of 16 channels nearly as slowly as the next multiple (a
    3x3 conv of 20 channels at 96 x 96: 2.6 ms against 1.1 ms channels-last), so channels-last both speeds
    up the full model and lets a pruned one's odd widths save time (``benchmarks/conv_widths.py``). The
    values are those of the NCHW path up to float summation order.
    """
    if not torch.is_grad_enabled() and _cpu_inference_nchw(x) and x.shape[1] > 1:
        return forward(x.contiguous(memory_format=torch.channels_last)).contiguous()  # (B, C', H', W') NCHW
    return forward(x)


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` whose CPU inference on an NCHW map pools in channels-last order.

    PyTorch's NCHW max-pool kernel on the CPU is scalar: a ResNet stem's 3x3 / 2 pool of a 64 x 112 x 112
    map takes ~7 ms at one thread, 7% of a ResNet-50 forward, against ~1.4 ms for the channels-last
    kernel with the two layout copies. A maximum is exact, so the result is the same tensor. Training
    keeps the stock kernel: which of two tied inputs receives the gradient is the kernel's choice.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.return_indices and _cpu_inference_nchw(x):
            y = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), self.kernel_size, self.stride,
                             self.padding, self.dilation, ceil_mode=self.ceil_mode)  # (B, C, H', W') channels-last
            return y.contiguous()  # back to NCHW, the layout the stock layer returns
        return super().forward(x)


class PixelShuffle(nn.PixelShuffle):
    """``nn.PixelShuffle`` (Shi et al., CVPR 2016) whose CPU inference on an NCHW map is one strided copy.

    PyTorch's NCHW CPU kernel takes ~2.4 ms for RCAN's x2 upsampler map (128 x 96 x 96 at one thread, 6% of
    the quickstart RCAN), the copy below ~1.0 ms; it moves the same values to the same places.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _cpu_inference_nchw(x) or x.shape[1] % (self.upscale_factor ** 2):
            return super().forward(x)  # the stock op also names a channel count r^2 does not divide
        b, c, h, w = x.shape
        r = self.upscale_factor
        y = x.view(b, c // (r * r), r, r, h, w)  # (B, C', r_h, r_w, H, W)
        return y.permute(0, 1, 4, 2, 5, 3).reshape(b, c // (r * r), h * r, w * r)  # (B, C', H r, W r)


def check_channels(block: str, expected: int, x: torch.Tensor) -> None:
    """Fail early with the expected and actual channel counts of a (B, C, ...) input."""
    if symbolic_tracing():  # FX proxies carry no shapes; the traced graph checks nothing
        return
    if x.ndim < 2 or x.shape[1] != expected:
        raise ValueError(f"{block} was built for {expected} channels but got an input of shape "
                         f"{tuple(x.shape)} ({x.shape[1] if x.ndim >= 2 else 'no'} channels); "
                         f"build it with channels={x.shape[1] if x.ndim >= 2 else '?'} or fix the input")


def pointwise(layer: nn.Module, s: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution applied to pooled (B, C) vectors, returning (B, C_out).

    A plain ``nn.Conv2d`` runs as a linear layer (no conv machinery for a 1x1 map) unless hooks
    observe it (calibration, feature extraction); any other layer (quantized, fake-quant for QAT)
    runs its own forward on the (B, C, 1, 1) map.
    """
    if type(layer) is nn.Conv2d and can_fuse(layer):
        return F.linear(s, layer.weight.flatten(1), layer.bias)
    return layer(s[:, :, None, None]).flatten(1)  # (B, C_out, 1, 1) -> (B, C_out)


_FUSED_ACTS = {nn.ReLU: "relu", nn.SiLU: "silu"}


def _plain_pointwise(layer: nn.Module) -> bool:
    """A float linear or 1x1 conv (groups 1) with no hooks: one the excitation kernel can read directly."""
    if type(layer) is nn.Conv2d:
        return layer.kernel_size == (1, 1) and layer.groups == 1 and can_fuse(layer)
    return type(layer) is nn.Linear and can_fuse(layer)


def fused_mlp_gate(x: torch.Tensor, pool_filter: torch.Tensor | None, down: nn.Module, act: nn.Module,
                   up: nn.Module, gate: nn.Module) -> torch.Tensor | None:
    """``gate(up(act(down(pool(x)))))`` as one ``zoo.kernels.squeeze_excite_mlp`` launch (the mean, or the
    weighted sum with ``pool_filter``), where its Triton kernel runs and it implements every piece (plain
    float layers, ReLU or SiLU, sigmoid); None otherwise, and the caller pools and runs its modules (the
    CPU path, quantized or hooked layers)."""
    # the cheapest refusal first: an FX proxy (symbolic tracing), then a map no Triton kernel runs on (the CPU)
    if not isinstance(x, torch.Tensor) or not kernels.squeeze_excite_runs_fused(x) or not can_fuse():
        return None
    name = _FUSED_ACTS.get(type(act))
    if name is None or type(gate) is not nn.Sigmoid or not (_plain_pointwise(down) and _plain_pointwise(up)):
        return None
    g, _ = kernels.squeeze_excite_mlp(x, pool_filter, down.weight.flatten(1), down.bias, up.weight.flatten(1),
                                      up.bias, name)
    return g


def fused_conv_gate(x: torch.Tensor, conv: nn.Module, gate: nn.Module) -> torch.Tensor | None:
    """ECA's ``gate(conv(mean_hw(x)))`` along the channels as one ``zoo.kernels.squeeze_excite_conv`` launch
    where its Triton kernel runs (a plain bias-free ``nn.Conv1d``, sigmoid); None otherwise."""
    if (not isinstance(x, torch.Tensor) or not kernels.squeeze_excite_runs_fused(x) or not can_fuse(conv)
            or type(conv) is not nn.Conv1d or conv.bias is not None or type(gate) is not nn.Sigmoid):
        return None
    g, _ = kernels.squeeze_excite_conv(x, None, conv.weight.view(-1))
    return g


def param_dtype(layer: nn.Module, default: torch.dtype) -> torch.dtype:
    """The dtype of ``layer``'s float weight (``default`` for a layer without one, e.g. quantized)."""
    weight = getattr(layer, "weight", None)
    return weight.dtype if isinstance(weight, torch.Tensor) and weight.is_floating_point() else default
