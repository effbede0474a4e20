"""The README.md beside a saved model: the hub's metadata block (library, task, tags, licence, paper,
metrics) and a page a person reads (what the model is, how to load it, what it was measured at)."""
from __future__ import annotations

import json
from typing import Any

from torch import nn


def _yaml_value(value: Any) -> str:
    return json.dumps(value)  # JSON scalars and lists are valid YAML


def model_card(model: nn.Module, config: dict, metrics: dict[str, float] | None = None, dataset: str = "") -> str:
    """The model card of ``model`` as ``save_pretrained`` writes it with ``config`` (its config.json);
    ``metrics`` were measured on ``dataset``."""
    cfg = {**config.get("pretrained_cfg", {}), **(config.get("zoo") or {}).get("pretrained_cfg", {})}
    arch = config["architecture"]
    family = type(model).__module__.rsplit(".", 1)[-1]
    params = sum(p.numel() for p in model.parameters())
    meta = {"library_name": "zoo", "license": cfg.get("license") or "other",
            "tags": ["zoo", family] + (["timm"] if config.get("pretrained_cfg") else []) +
                    (["quantized", config["quant"]] if config.get("quant") else [])}
    if getattr(model, "pipeline_tag", None):
        meta["pipeline_tag"] = model.pipeline_tag
    lines = ["---"] + [f"{k}: {_yaml_value(v)}" for k, v in meta.items()]
    if metrics:
        lines += ["model-index:", f"- name: {_yaml_value(arch)}", "  results:", "  - task:",
                  f"      type: {_yaml_value(meta.get('pipeline_tag', 'other'))}", "    dataset:",
                  f"      name: {_yaml_value(dataset or 'unspecified')}", f"      type: {_yaml_value(dataset or 'unspecified')}",
                  "    metrics:"]
        for name, value in metrics.items():
            lines += [f"    - name: {_yaml_value(name)}", f"      type: {_yaml_value(name)}", f"      value: {float(value)}"]
    lines += ["---", "", f"# {arch}", ""]
    facts = [f"- architecture: `{arch}` ({family} family), {params / 1e6:.2f} M parameters"]
    if config.get("num_classes") is not None:
        facts.append(f"- classes: {config['num_classes']}")
    if cfg.get("input_size"):
        facts.append(f"- input: {tuple(cfg['input_size'])}, interpolation {cfg.get('interpolation')}, "
                     f"crop {cfg.get('crop_pct')}, mean {tuple(cfg.get('mean', ()))}, std {tuple(cfg.get('std', ()))}")
    if config.get("quant"):
        facts.append(f"- quantized: `{config['quant']}` (integer weights; load it as it is)")
    if cfg.get("paper"):
        facts.append(f"- paper: {cfg['paper']}")
    if cfg.get("origin_url"):
        facts.append(f"- original release: {cfg['origin_url']}")
    for name, value in (metrics or {}).items():
        facts.append(f"- {name}: {float(value):.4g}" + (f" on {dataset}" if dataset else ""))
    usage = ["", "```python", "import zoo", "", f'model = zoo.create("{arch}", pretrained="hf-hub:<this repository>")',
             "```"]
    if config.get("pretrained_cfg") and not config.get("quant"):
        usage += ["", "timm reads the same folder: `timm.create_model(\"local-dir:<folder>\", pretrained=True)`."]
    return "\n".join(lines + facts + usage) + "\n"
