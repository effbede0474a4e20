"""ResNets with a pluggable channel-attention block: ResNet, SE-ResNet, ECA-ResNet, FcaNet.

- ResNet: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
- SE-ResNet: Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018 (timm's ``seresnet`` layout).
- ECA-ResNet: Wang et al., "ECA-Net", CVPR 2020 (the release's ``eca`` layout, and timm's ``ecaresnet*d``
  with the deep stem and average-pool shortcut of He et al., "Bag of Tricks", CVPR 2019).
- FcaNet: Qin et al., "FcaNet: Frequency Channel Attention Networks", ICCV 2021 (release layout).

One network, one block per depth; the attention block comes from the :mod:`blocks` registry and
sits after the last norm of each residual branch, under the key its release uses (``se``, ``eca``,
``att``), so every family's checkpoints load without renaming.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import torch
from timm.layers import SelectAdaptivePool2d
from timm.models._features import feature_take_indices
from torch import nn

from zoo import blocks
from zoo import kernels
from zoo.blocks.validation import check_image, check_tensor, float_param, owner_name, symbolic_tracing
from zoo.blocks.fusion import can_fuse
from zoo.blocks.layers import MaxPool2d, stochastic_depth

from ..builder import build_model
from ..features import FeatureInfo
from ..pretrained import PretrainedCfg
from ..pruning.groups import Group
from ..registry import register_model, register_pretrained_cfgs

__all__ = ["ResNet", "BasicBlock", "Bottleneck"]


def _conv(in_chs: int, out_chs: int, kernel: int, stride: int = 1, **factory) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, kernel, stride=stride, padding=kernel // 2, bias=False, **factory)


def _attn(attn_layer: str | None, channels: int, attn_kwargs: dict, factory: dict) -> nn.Module:
    return blocks.create(attn_layer, channels, **attn_kwargs, **factory) if attn_layer else nn.Identity()


def _fusable(attn: nn.Module, drop_path: nn.Module, act: nn.Module, x: torch.Tensor, shortcut: torch.Tensor) -> bool:
    """Whether ``act(drop_path(attn(x)) + shortcut)`` may run as ``channel_scale(x, gate, shortcut, relu=True)``:
    a channel gate and a ReLU without hooks (the fused path calls neither module's forward), no active
    stochastic depth, and a shortcut of x's shape and dtype."""
    return (can_fuse(attn, act) and isinstance(attn, blocks.ChannelGate) and type(act) is nn.ReLU
            and (isinstance(drop_path, nn.Identity) or not drop_path.training or drop_path.drop_prob == 0.0)
            and shortcut.shape == x.shape and shortcut.dtype == x.dtype)


class BasicBlock(nn.Module):
    """Two 3x3 convs; attention on the branch output, then the residual add."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 attn_layer: str | None = None, attn_name: str = "se", attn_kwargs: dict | None = None,
                 drop_path: float = 0.0, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.conv1 = _conv(inplanes, planes, 3, stride, **factory)
        self.bn1 = nn.BatchNorm2d(planes, **factory)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = _conv(planes, planes, 3, **factory)
        self.bn2 = nn.BatchNorm2d(planes, **factory)
        self.attn_name = attn_name
        self.add_module(attn_name, _attn(attn_layer, planes, attn_kwargs or {}, factory))
        self.drop_path = stochastic_depth(drop_path)
        self.downsample = downsample
        self.act2 = nn.ReLU(inplace=True)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        attn = self._modules[self.attn_name]
        if _fusable(attn, self.drop_path, self.act2, x, shortcut):
            # relu(x * gate + shortcut) as one kernel: the block's output is written once
            return kernels.channel_scale(x, attn.channel_gate(x), shortcut, relu=True)
        x = self.drop_path(attn(x))
        x += shortcut  # in place, as timm: nothing before it saved this tensor for backward
        return self.act2(x)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, as torchvision/timm), 1x1 expand x4; attention after bn3."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 attn_layer: str | None = None, attn_name: str = "se", attn_kwargs: dict | None = None,
                 drop_path: float = 0.0, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        outplanes = planes * self.expansion
        self.conv1 = _conv(inplanes, planes, 1, **factory)
        self.bn1 = nn.BatchNorm2d(planes, **factory)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = _conv(planes, planes, 3, stride, **factory)
        self.bn2 = nn.BatchNorm2d(planes, **factory)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = _conv(planes, outplanes, 1, **factory)
        self.bn3 = nn.BatchNorm2d(outplanes, **factory)
        self.attn_name = attn_name
        self.add_module(attn_name, _attn(attn_layer, outplanes, attn_kwargs or {}, factory))
        self.drop_path = stochastic_depth(drop_path)
        self.downsample = downsample
        self.act3 = nn.ReLU(inplace=True)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        attn = self._modules[self.attn_name]
        if _fusable(attn, self.drop_path, self.act3, x, shortcut):
            # relu(x * gate + shortcut) as one kernel: the block's output is written once
            return kernels.channel_scale(x, attn.channel_gate(x), shortcut, relu=True)
        x = self.drop_path(attn(x))
        x += shortcut  # in place, as timm: nothing before it saved this tensor for backward
        return self.act3(x)


POOL_TYPES = ("avg", "max", "avgmax", "catavgmax", "")  # timm's global pools; '' keeps the map


def _pool(global_pool: str) -> SelectAdaptivePool2d:
    """timm's pooling by name, flattened to (B, C) unless '' keeps the (B, C, H, W) map."""
    if global_pool not in POOL_TYPES:
        raise ValueError(f"global_pool must be one of {', '.join(repr(p) for p in POOL_TYPES)} ('' keeps the "
                         f"feature map); got {global_pool!r}")
    return SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))


def _downsample(in_chs: int, out_chs: int, stride: int, avg_down: bool, factory: dict) -> nn.Sequential:
    """Projection shortcut: strided 1x1 conv + BN, or (``avg_down``) 2x2 average pool, then 1x1 conv + BN."""
    if not avg_down:
        return nn.Sequential(_conv(in_chs, out_chs, 1, stride, **factory), nn.BatchNorm2d(out_chs, **factory))
    pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
    return nn.Sequential(pool, _conv(in_chs, out_chs, 1, **factory), nn.BatchNorm2d(out_chs, **factory))


class ResNet(nn.Module):
    """ResNet with an optional channel-attention block in every residual branch.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
        num_classes: classifier outputs; 0 removes the classifier (``forward`` gives pooled features).
        in_chans: input channels.
        stem_type: ``''`` (7x7 conv) or ``'deep'`` (three 3x3 convs, timm's ``d`` variants).
        stem_width: width of the deep stem's first two convs.
        avg_down: average-pool shortcut instead of a strided 1x1 conv (``d`` variants).
        attn_layer: a block name from :mod:`blocks` (``se``, ``eca``, ``fca``, ...) or None.
        attn_name: the submodule name of the attention block, i.e. its checkpoint key.
        attn_kwargs: keyword arguments for every attention block.
        stage_attn_kwargs: per-stage keyword arguments (4 dicts), e.g. ECA kernel or FcaNet DCT sizes.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, rising linearly to this rate over the blocks.
        zero_init_last: zero the last BN of each branch so every block starts as the identity.
    """

    pipeline_tag = "image-classification"  # the Hugging Face hub's task, for the model card

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck] = Bottleneck,
        layers: Sequence[int] = (3, 4, 6, 3),
        num_classes: int = 1000,
        in_chans: int = 3,
        stem_type: str = "",
        stem_width: int = 64,
        avg_down: bool = False,
        attn_layer: str | None = None,
        attn_name: str = "se",
        attn_kwargs: dict | None = None,
        stage_attn_kwargs: Sequence[dict] | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        zero_init_last: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must give 4 stage depths, got {tuple(layers)}")
        if stem_type not in ("", "deep"):
            raise ValueError(f"stem_type must be '' or 'deep', got {stem_type!r}")
        pool = _pool(global_pool)  # bad names fail before any layer is built
        stage_attn_kwargs = list(stage_attn_kwargs or [{}] * 4)
        if len(stage_attn_kwargs) != 4:
            raise ValueError(f"stage_attn_kwargs must hold 4 dicts, one per stage; got {len(stage_attn_kwargs)}")
        factory = {"device": device, "dtype": dtype}
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        inplanes = 64
        if stem_type == "deep":
            self.conv1 = nn.Sequential(
                _conv(in_chans, stem_width, 3, 2, **factory), nn.BatchNorm2d(stem_width, **factory), nn.ReLU(inplace=True),
                _conv(stem_width, stem_width, 3, **factory), nn.BatchNorm2d(stem_width, **factory), nn.ReLU(inplace=True),
                _conv(stem_width, inplanes, 3, **factory),
            )
        else:
            self.conv1 = _conv(in_chans, inplanes, 7, 2, **factory)
        self.bn1 = nn.BatchNorm2d(inplanes, **factory)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.feature_info = FeatureInfo([dict(num_chs=inplanes, reduction=2, module="act1")])

        total_blocks, block_idx, reduction = sum(layers), 0, 4
        for stage, (planes, depth) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if stage == 0 else 2
            reduction *= stride
            outplanes = planes * block.expansion
            stage_blocks = []
            for i in range(depth):
                downsample = None
                if i == 0 and (stride != 1 or inplanes != outplanes):
                    downsample = _downsample(inplanes, outplanes, stride, avg_down, factory)
                dpr = drop_path_rate * block_idx / max(total_blocks - 1, 1)
                stage_blocks.append(block(
                    inplanes, planes, stride if i == 0 else 1, downsample, attn_layer=attn_layer, attn_name=attn_name,
                    attn_kwargs={**(attn_kwargs or {}), **stage_attn_kwargs[stage]}, drop_path=dpr, **factory))
                inplanes = outplanes
                block_idx += 1
            self.add_module(f"layer{stage + 1}", nn.Sequential(*stage_blocks))
            self.feature_info.append(dict(num_chs=outplanes, reduction=reduction, module=f"layer{stage + 1}"))

        self.num_features = inplanes
        self.global_pool = pool
        self.fc = nn.Linear(self.head_hidden_size, num_classes, **factory) if num_classes > 0 else nn.Identity()
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_last:
            for m in self.modules():
                if hasattr(m, "zero_init_last"):
                    m.zero_init_last()

    @property
    def head_hidden_size(self) -> int:
        """The pooled width the classifier reads (``catavgmax`` pooling: twice ``num_features``)."""
        return self.num_features * self.global_pool.feat_mult()

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh ``num_classes``-way classifier (0: no classifier), in the model's
        device, dtype and train / eval mode; ``global_pool`` (see :data:`POOL_TYPES`) changes the pooling."""
        if global_pool is not None:
            self.global_pool = _pool(global_pool)
        self.num_classes = num_classes
        ref = next(self.parameters())
        self.fc = (nn.Linear(self.head_hidden_size, num_classes, device=ref.device, dtype=ref.dtype)
                   if num_classes > 0 else nn.Identity()).train(self.training)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _check_input(self, x: torch.Tensor) -> None:
        if symbolic_tracing():  # the traced graph carries no checks; the model checks when it runs
            return
        arch = owner_name(self)
        check_tensor(arch, x, "images (B, C, H, W)")
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"{arch} expects input (B, {self.in_chans}, H, W); got shape {tuple(x.shape)}. "
                             f"Build it with in_chans={x.shape[1] if x.ndim == 4 else '?'} or fix the input.")
        check_image(arch, x, float_param(self))

    def _run_stage(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            return torch.utils.checkpoint.checkpoint_sequential(stage, len(stage), x, use_reentrant=False)
        return stage(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and the four stages: (B, in_chans, H, W) -> (B, num_features, H/32, W/32)."""
        self._check_input(x)
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = self._run_stage(stage, x)
        return x

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's intermediate-features API over the five taps of ``feature_info`` (the stem before its
        max-pool, then each stage): ``indices`` an int takes the last n, a sequence picks (negative from
        the end), None all. ``stop_early`` skips the stages after the last tap (then the returned final
        features are that tap's). Returns ``(final features, taps)``, or the taps alone. ``norm`` has
        nothing to apply to in a ResNet (no final norm layer)."""
        if output_fmt != "NCHW":
            raise ValueError(f"forward_intermediates: a ResNet's features are NCHW; got output_fmt={output_fmt!r}")
        take, last = feature_take_indices(5, indices)
        self._check_input(x)
        x = self.act1(self.bn1(self.conv1(x)))
        taps = [x] if 0 in take else []
        x = self.maxpool(x)
        stages = (self.layer1, self.layer2, self.layer3, self.layer4)
        for i, stage in enumerate(stages[:last] if stop_early else stages, start=1):
            x = self._run_stage(stage, x)
            if i in take:
                taps.append(x)
        return taps if intermediates_only else (x, taps)

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last tap ``indices`` selects (as :meth:`forward_intermediates` counts
        them) and, with ``prune_head``, the classifier: what a backbone for dense heads keeps, as timm's
        does. Returns the kept tap indices."""
        take, last = feature_take_indices(5, indices)
        for name in ("layer1", "layer2", "layer3", "layer4")[max(last, 0):]:
            setattr(self, name, nn.Identity())
        if last == 0:  # the stem tap is before the max-pool: forward_features ends at it
            self.maxpool = nn.Identity()
        self.num_features = self.feature_info[last]["num_chs"]
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, dropout and classify; ``pre_logits=True`` stops before the classifier."""
        x = self.global_pool(x)  # (B, head_hidden_size), or the map itself without pooling
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


    def pruning_groups(self) -> list[Group]:
        """The channels :func:`zoo.prune` removes together (see :mod:`zoo.pruning.groups`).

        - One residual *stream* per run of blocks without a projection: every branch's last conv and
          BN write it, the attention block on that branch gates it, the next blocks' first convs (and
          a projection shortcut) read it; the stem's output is the first stream, the classifier reads
          the last. A projection shortcut starts a new stream.
        - Each block's inner channels (after conv1, and after conv2 in a bottleneck), and each SE /
          FcaNet squeeze width: groups of their own, gated by nothing.
        """
        groups: list[Group] = []
        if isinstance(self.conv1, nn.Sequential):  # deep stem: two inner widths, then the stem's output
            groups.append(Group("stem.0").add("conv1.0", "out").add("conv1.1", "channels").add("conv1.3", "in"))
            groups.append(Group("stem.1").add("conv1.3", "out").add("conv1.4", "channels").add("conv1.6", "in"))
            stream = Group("stem").add("conv1.6", "out")
        else:
            stream = Group("stem").add("conv1", "out")
        stream.add("bn1", "channels")
        for stage in range(1, 5):
            layer = getattr(self, f"layer{stage}")
            if not isinstance(layer, nn.Sequential):  # cut off by prune_intermediate_layers
                return groups + [stream]
            for index, block in enumerate(layer):
                prefix = f"layer{stage}.{index}"
                stream.add(f"{prefix}.conv1", "in")
                if block.downsample is not None:
                    conv = len(block.downsample) - 2  # (pool,) conv, bn
                    stream.add(f"{prefix}.downsample.{conv}", "in")
                    groups.append(stream)
                    stream = Group(f"layer{stage}").add(f"{prefix}.downsample.{conv}", "out")
                    stream.add(f"{prefix}.downsample.{conv + 1}", "channels")
                convs = 3 if isinstance(block, Bottleneck) else 2
                for inner in range(1, convs):
                    groups.append(Group(f"{prefix}.inner{inner}").add(f"{prefix}.conv{inner}", "out")
                                  .add(f"{prefix}.bn{inner}", "channels").add(f"{prefix}.conv{inner + 1}", "in"))
                stream.add(f"{prefix}.conv{convs}", "out").add(f"{prefix}.bn{convs}", "channels")
                attn = block._modules[block.attn_name]
                if isinstance(attn, blocks.ChannelGate):
                    stream.add(f"{prefix}.{block.attn_name}", "channels")
                    stream.gates.append(f"{prefix}.{block.attn_name}")
                    if not isinstance(attn, blocks.EfficientChannelAttention):  # ECA has no squeeze width
                        groups.append(Group(f"{prefix}.{block.attn_name}.hidden").add(f"{prefix}.{block.attn_name}", "hidden"))
                elif not isinstance(attn, nn.Identity):
                    raise TypeError(f"pruning cannot shrink the attention block {type(attn).__name__} of {prefix}: only "
                                    f"channel gates (se, eca, fca, ca) are supported")
        if isinstance(self.fc, nn.Linear):
            stream.add("fc", "in", blocks=self.global_pool.feat_mult())
        stream.add("", "attr:num_features")
        return groups + [stream]

_ATTN_KEYS = ("se", "eca", "att", "se_module", "attn")


def checkpoint_filter_fn(state_dict: dict, model: ResNet) -> dict:
    """Map ResNet-family layouts onto ``model``: the attention key of another release
    (``se``/``eca``/``att``/``se_module``) becomes the model's, and legacy ``last_linear`` becomes ``fc``."""
    attn_name = model.layer1[0].attn_name
    pattern = re.compile(r"^(layer\d+\.\d+\.)(" + "|".join(_ATTN_KEYS) + r")\.")
    out = {}
    for key, value in state_dict.items():
        key = pattern.sub(lambda m: f"{m.group(1)}{attn_name}.", key)
        key = re.sub(r"^last_linear\.", "fc.", key)
        out[key] = value
    return out


def _cfg(**kwargs: Any) -> PretrainedCfg:
    return PretrainedCfg(**{"paper": "https://arxiv.org/abs/1512.03385", "pool_size": (7, 7), **kwargs})


_TV = dict(interpolation="bilinear", license="bsd-3-clause", origin_url="https://github.com/pytorch/vision")
_TIMM = dict(crop_pct=0.95, test_input_size=(3, 288, 288), test_crop_pct=1.0, license="apache-2.0",
             origin_url="https://github.com/huggingface/pytorch-image-models")
_ECA = dict(paper="https://arxiv.org/abs/1910.03151", origin_url="https://github.com/BangguWu/ECANet", license="mit",
            notes="the release files are on Baidu Pan; place the .pth.tar in the torch hub cache")
_FCA = dict(paper="https://arxiv.org/abs/2012.11879", origin_url="https://github.com/cfzd/FcaNet", license="mit")

default_cfgs = register_pretrained_cfgs({
    "resnet18.tv_in1k": _cfg(url="https://download.pytorch.org/models/resnet18-f37072fd.pth", **_TV),
    "resnet34.tv_in1k": _cfg(url="https://download.pytorch.org/models/resnet34-b627a593.pth", **_TV),
    "resnet50.a1_in1k": _cfg(hf_hub_id="timm/resnet50.a1_in1k", **_TIMM),
    "resnet50.tv_in1k": _cfg(url="https://download.pytorch.org/models/resnet50-0676ba61.pth", **_TV),
    "resnet101.tv_in1k": _cfg(url="https://download.pytorch.org/models/resnet101-63fe2227.pth", **_TV),
    "resnet152.tv_in1k": _cfg(url="https://download.pytorch.org/models/resnet152-394f9c45.pth", **_TV),
    "seresnet50.a1_in1k": _cfg(hf_hub_id="timm/seresnet50.a1_in1k", **{**_TIMM, "paper": "https://arxiv.org/abs/1709.01507"}),
    "eca_resnet50.release_in1k": _cfg(filename="eca_resnet50_k3557.pth.tar", interpolation="bilinear", **_ECA),
    "eca_resnet101.release_in1k": _cfg(filename="eca_resnet101_k3357.pth.tar", interpolation="bilinear", **_ECA),
    "eca_resnet152.release_in1k": _cfg(filename="eca_resnet152_k3357.pth.tar", interpolation="bilinear", **_ECA),
    # the MIIL weights: timm's cfg (bicubic, 0.875, tested at 288 with 0.95)
    "ecaresnet50d.miil_in1k": _cfg(hf_hub_id="timm/ecaresnet50d.miil_in1k", first_conv="conv1.0",
                                   **{**_TIMM, "crop_pct": 0.875, "test_crop_pct": 0.95,
                                      "paper": "https://arxiv.org/abs/1910.03151"}),
    "ecaresnet101d.miil_in1k": _cfg(hf_hub_id="timm/ecaresnet101d.miil_in1k", first_conv="conv1.0",
                                    **{**_TIMM, "crop_pct": 0.875, "test_crop_pct": 0.95,
                                       "paper": "https://arxiv.org/abs/1910.03151"}),
    "fcanet34.release_in1k": _cfg(url="https://github.com/cfzd/FcaNet/releases/download/v1.0/fca34.pth", **_FCA),
    "fcanet50.release_in1k": _cfg(url="https://github.com/cfzd/FcaNet/releases/download/v1.0/fca50.pth", **_FCA),
    "fcanet101.release_in1k": _cfg(url="https://github.com/cfzd/FcaNet/releases/download/v1.0/fca101.pth", **_FCA),
    "fcanet152.release_in1k": _cfg(url="https://github.com/cfzd/FcaNet/releases/download/v1.0/fca152.pth", **_FCA),
    "ecaresnet50d": _cfg(first_conv="conv1.0"),
    "ecaresnet101d": _cfg(first_conv="conv1.0"),
    # the architectures without released weights: their shapes still in timm's form (pool_size, ...)
    **{f"seresnet{d}": _cfg(paper="https://arxiv.org/abs/1709.01507") for d in (18, 34, 101, 152)},
    **{f"eca_resnet{d}": _cfg(paper=_ECA["paper"]) for d in (18, 34)},
})

_DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3)),
           101: (Bottleneck, (3, 4, 23, 3)), 152: (Bottleneck, (3, 8, 36, 3))}
# kernel sizes of the ECA-Net release files (not the adaptive formula): ResNet-18 k3577, 50 k3557, others k3357
_ECA_RELEASE_K = {18: (3, 5, 7, 7), 34: (3, 3, 5, 7), 50: (3, 5, 5, 7), 101: (3, 3, 5, 7), 152: (3, 3, 5, 7)}
_FCA_DCT = (56, 28, 14, 7)  # the stage resolutions at 224x224 input


def _create_resnet(variant: str, depth: int, pretrained: Any = False, **kwargs: Any) -> ResNet:
    block, layers = _DEPTHS[depth]
    kwargs = {"block": block, "layers": layers, **kwargs}
    return build_model(ResNet, variant, pretrained, filter_fn=checkpoint_filter_fn, **kwargs)


def _eca_stage_args(k_size: int | Sequence[int] | None) -> list[dict]:
    if k_size is None or isinstance(k_size, int):
        return [{"k_size": k_size}] * 4
    if len(k_size) != 4:
        raise ValueError(f"k_size must be one int, None (adaptive) or 4 per-stage sizes; got {tuple(k_size)}")
    return [{"k_size": int(k)} for k in k_size]


def _eca_resnet(variant: str, depth: int, pretrained: Any, k_size: Any, **kwargs: Any) -> ResNet:
    k_size = _ECA_RELEASE_K[depth] if k_size == "release" else k_size
    return _create_resnet(variant, depth, pretrained, attn_layer="eca", attn_name="eca",
                          stage_attn_kwargs=_eca_stage_args(k_size), **kwargs)


def _fcanet(variant: str, depth: int, pretrained: Any, **kwargs: Any) -> ResNet:
    stage_args = [{"dct_h": s, "dct_w": s} for s in _FCA_DCT]
    return _create_resnet(variant, depth, pretrained, attn_layer="fca", attn_name="att",
                          attn_kwargs={"reduction": 16, "freq_sel_method": "top16"}, stage_attn_kwargs=stage_args, **kwargs)


def _se(**kwargs: Any) -> dict:
    return {"attn_layer": "se", "attn_name": "se", **kwargs}


def _ecad(**kwargs: Any) -> dict:
    # timm's ecaresnet*d: deep stem, average-pool shortcut, adaptive ECA kernels, key 'se'
    return {"stem_type": "deep", "stem_width": 32, "avg_down": True, "attn_layer": "eca", "attn_name": "se", **kwargs}


@register_model
def resnet18(pretrained: Any = False, **kwargs: Any) -> ResNet:
    """ResNet-18."""
    return _create_resnet("resnet18", 18, pretrained, **kwargs)


@register_model
def resnet34(pretrained: Any = False, **kwargs: Any) -> ResNet:
    """ResNet-34."""
    return _create_resnet("resnet34", 34, pretrained, **kwargs)


@register_model
def resnet50(pretrained: Any = False, **kwargs: Any) -> ResNet:
    """ResNet-50."""
    return _create_resnet("resnet50", 50, pretrained, **kwargs)


@register_model
def resnet101(pretrained: Any = False, **kwargs: Any) -> ResNet:
    """ResNet-101."""
    return _create_resnet("resnet101", 101, pretrained, **kwargs)


@register_model
def resnet152(pretrained: Any = False, **kwargs: Any) -> ResNet:
    """ResNet-152."""
    return _create_resnet("resnet152", 152, pretrained, **kwargs)


@register_model
def seresnet18(pretrained: Any = False, **kwargs: Any) -> ResNet:
    """SE-ResNet-18 (timm layout)."""
    return _create_resnet("seresnet18", 18, pretrained, **_se(**kwargs))


@register_model
def seresnet34(pretrained: Any = False, **kwargs: Any) -> ResNet:
    """SE-ResNet-34 (timm layout)."""
    return _create_resnet("seresnet34", 34, pretrained, **_se(**kwargs))


@register_model
def seresnet50(pretrained: Any = False, **kwargs: Any) -> ResNet:
    """SE-ResNet-50 (timm layout)."""
    return _create_resnet("seresnet50", 50, pretrained, **_se(**kwargs))


@register_model
def seresnet101(pretrained: Any = False, **kwargs: Any) -> ResNet:
    """SE-ResNet-101 (timm layout)."""
    return _create_resnet("seresnet101", 101, pretrained, **_se(**kwargs))


@register_model
def seresnet152(pretrained: Any = False, **kwargs: Any) -> ResNet:
    """SE-ResNet-152 (timm layout)."""
    return _create_resnet("seresnet152", 152, pretrained, **_se(**kwargs))


@register_model
def eca_resnet18(pretrained: Any = False, k_size: Any = "release", **kwargs: Any) -> ResNet:
    """ECA-ResNet-18 (release layout); ``k_size``: 4 per-stage sizes, one int, None (adaptive) or 'release' (3,5,7,7)."""
    return _eca_resnet("eca_resnet18", 18, pretrained, k_size, **kwargs)


@register_model
def eca_resnet34(pretrained: Any = False, k_size: Any = "release", **kwargs: Any) -> ResNet:
    """ECA-ResNet-34 (release layout); ``k_size`` defaults to the release's 3,3,5,7."""
    return _eca_resnet("eca_resnet34", 34, pretrained, k_size, **kwargs)


@register_model
def eca_resnet50(pretrained: Any = False, k_size: Any = "release", **kwargs: Any) -> ResNet:
    """ECA-ResNet-50 (release layout); ``k_size`` defaults to the release file's 3,5,5,7."""
    return _eca_resnet("eca_resnet50", 50, pretrained, k_size, **kwargs)


@register_model
def eca_resnet101(pretrained: Any = False, k_size: Any = "release", **kwargs: Any) -> ResNet:
    """ECA-ResNet-101 (release layout); ``k_size`` defaults to the release file's 3,3,5,7."""
    return _eca_resnet("eca_resnet101", 101, pretrained, k_size, **kwargs)


@register_model
def eca_resnet152(pretrained: Any = False, k_size: Any = "release", **kwargs: Any) -> ResNet:
    """ECA-ResNet-152 (release layout); ``k_size`` defaults to the release file's 3,3,5,7."""
    return _eca_resnet("eca_resnet152", 152, pretrained, k_size, **kwargs)


@register_model
def ecaresnet50d(pretrained: Any = False, **kwargs: Any) -> ResNet:
    """ECA-ResNet-50-D (timm layout: deep stem, average-pool shortcut)."""
    return _create_resnet("ecaresnet50d", 50, pretrained, **_ecad(**kwargs))


@register_model
def ecaresnet101d(pretrained: Any = False, **kwargs: Any) -> ResNet:
    """ECA-ResNet-101-D (timm layout: deep stem, average-pool shortcut)."""
    return _create_resnet("ecaresnet101d", 101, pretrained, **_ecad(**kwargs))


@register_model
def fcanet34(pretrained: Any = False, **kwargs: Any) -> ResNet:
    """FcaNet-34 (release layout, top-16 DCT frequencies)."""
    return _fcanet("fcanet34", 34, pretrained, **kwargs)


@register_model
def fcanet50(pretrained: Any = False, **kwargs: Any) -> ResNet:
    """FcaNet-50 (release layout, top-16 DCT frequencies)."""
    return _fcanet("fcanet50", 50, pretrained, **kwargs)


@register_model
def fcanet101(pretrained: Any = False, **kwargs: Any) -> ResNet:
    """FcaNet-101 (release layout, top-16 DCT frequencies)."""
    return _fcanet("fcanet101", 101, pretrained, **kwargs)


@register_model
def fcanet152(pretrained: Any = False, **kwargs: Any) -> ResNet:
    """FcaNet-152 (release layout, top-16 DCT frequencies)."""
    return _fcanet("fcanet152", 152, pretrained, **kwargs)
