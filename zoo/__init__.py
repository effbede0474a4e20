"""zoo: channel- and scale-centred architectures with timm-style creation and pretrained loading.

>>> import zoo
>>> model = zoo.create("seresnet50", num_classes=10)
>>> zoo.list_models("*eca*")
"""
__version__ = "0.1.0"  # the one version string (pyproject.toml reads it)

from . import kernels, blocks  # noqa: F401  (the layers below the models: zoo.kernels, zoo.blocks)
from .checkpoint import CheckpointError
from .factory import create
from .hub import push_to_hub, save_pretrained
from .pretrained import PretrainedCfg
from .registry import get_pretrained_cfg, list_models, list_pretrained, register_model, register_pretrained_cfgs
from . import models  # noqa: F401  (registers the families)
from .quant import QuantSpec, quant_aware, quantize
from .quant.io import save_quantized
from .pruning import prune
from .deploy import optimize
from .onnx_export import export_onnx
from .timm_bridge import register_with_timm

register_with_timm()  # timm.create_model("fcanet50") and the other families timm lacks, once zoo is imported

__all__ = [
    "CheckpointError",
    "PretrainedCfg",
    "QuantSpec",
    "quant_aware",
    "quantize",
    "prune",
    "optimize",
    "export_onnx",
    "save_quantized",
    "create",
    "get_pretrained_cfg",
    "list_models",
    "list_pretrained",
    "register_model",
    "register_pretrained_cfgs",
    "save_pretrained",
    "push_to_hub",
]
