"""Quantization: specs, calibration (RTN, SmoothQuant, AWQ, Outlier Suppression+, RepQ-ViT), conversion, files.

>>> model = zoo.create("rcan_tiny_x2", pretrained=True)
>>> zoo.quantize(model, "w4a8", calib=batches, method="awq")
"""
from zoo.blocks.quant_spec import PRESETS, QuantSpec
from .methods import METHODS
from .convert import quant_aware, quantize, select_layers, summary

__all__ = ["PRESETS", "METHODS", "QuantSpec", "quant_aware", "quantize", "select_layers", "summary"]
