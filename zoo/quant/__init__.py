"""Quantization: specs, calibration (RTN, SmoothQuant, AWQ, Outlier Suppression+, RepQ-ViT, GPTQ), conversion, files.

>>> model = zoo.create("rcan_tiny_x2", pretrained=True)
>>> zoo.quantize(model, "w4a8", calib=batches, method="awq")
>>> print(zoo.quant.analyze(model, batches, "w4a8"))   # which layers and channels are hard to quantize
"""
from zoo.blocks.quant_spec import PRESETS, QuantSpec
from .methods import METHODS
from . import gptq  # noqa: F401  (registers the "gptq" method)
from .convert import quant_aware, quantize, select_layers, summary
from .analyze import QuantReport, analyze
from .plan import QuantPlan
from . import auto  # noqa: F401  (registers the "auto" planner)

__all__ = ["PRESETS", "METHODS", "QuantPlan", "QuantReport", "QuantSpec", "analyze", "quant_aware", "quantize", "select_layers",
           "summary"]
