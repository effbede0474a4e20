"""Pretrained configurations: where a model's weights come from and how its inputs look."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PretrainedCfg:
    """One set of weights for one architecture (``arch.tag``), plus what its inputs expect.

    Weight sources are tried in the order ``file``, ``hf_hub_id``, ``url``; ``filename`` names a file
    that must be downloaded by hand (the release is behind a login or a file host) and placed in the
    torch hub cache. A cfg with none of them describes inputs only.
    """

    architecture: str = ""
    tag: str = ""
    file: str = ""
    hf_hub_id: str = ""
    url: str = ""
    filename: str = ""
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    num_classes: int = 1000
    first_conv: str = "conv1"
    classifier: str = "fc"
    license: str = ""
    paper: str = ""
    origin_url: str = ""
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.architecture}.{self.tag}" if self.tag else self.architecture

    @property
    def source(self) -> str:
        """Which kind of source holds the weights: file, hf-hub, url, manual or none."""
        for kind, value in (("file", self.file), ("hf-hub", self.hf_hub_id), ("url", self.url), ("manual", self.filename)):
            if value:
                return kind
        return "none"

    @property
    def has_weights(self) -> bool:
        return self.source != "none"

    def replace(self, **changes) -> PretrainedCfg:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """A plain dict, the form timm exposes as ``model.pretrained_cfg`` (JSON-serialisable)."""
        out = dataclasses.asdict(self)
        out["source"] = self.source
        return out

    @classmethod
    def from_dict(cls, data: dict) -> PretrainedCfg:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("input_size", "mean", "std"):
            if key in kwargs and kwargs[key] is not None:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)
