"""Pretrained configurations: where a model's weights come from and how its inputs look."""
from __future__ import annotations

import dataclasses
import posixpath
from dataclasses import dataclass, field
from urllib.parse import urlparse

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
    test_input_size: tuple[int, int, int] | None = None
    fixed_input_size: bool = False
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    test_crop_pct: float | None = None
    crop_mode: str = "center"
    pool_size: tuple[int, ...] | None = None  # the final feature map at input_size (timm's key)
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

    @property
    def release_file(self) -> str:
        """The name the release gives its weights file (``fca50.pth``, ``RCAN_BIX2.pt``): the hand-placed
        ``filename`` or the URL's last part; '' for hub repositories and local files."""
        return self.filename or (posixpath.basename(urlparse(self.url).path) if self.url else "")

    def replace(self, **changes) -> PretrainedCfg:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """A plain dict, the form timm exposes as ``model.pretrained_cfg`` (JSON-serialisable)."""
        out = dataclasses.asdict(self)
        out["source"] = self.source
        return out

    def split_for_timm(self) -> tuple[dict, dict]:
        """``(timm's pretrained_cfg, the zoo's own fields)`` for a config.json that timm loads as it is:
        the first holds only keys timm's ``PretrainedCfg`` takes, without the weight source (the file is
        beside it); the second the zoo's own fields (``filename``, ``paper``, ``notes``, ``extra``)."""
        from timm.models import PretrainedCfg as TimmCfg

        timm_keys = {f.name for f in dataclasses.fields(TimmCfg)} - set(SOURCE_FIELDS)
        data = dataclasses.asdict(self)
        timm_cfg = {k: v for k, v in data.items() if k in timm_keys and k not in ("notes",) and v not in (None, "")}
        for key in ("pool_size", "first_conv", "classifier"):  # timm keeps these even when empty
            timm_cfg.setdefault(key, data[key] or None)
        own = {k: data[k] for k in ZOO_FIELDS if data[k]}
        return timm_cfg, own

    @classmethod
    def from_dict(cls, data: dict) -> PretrainedCfg:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known and not (v is None and k in _STR_FIELDS)}
        for key in ("input_size", "test_input_size", "mean", "std", "pool_size"):
            if key in kwargs and kwargs[key] is not None:
                kwargs[key] = tuple(kwargs[key])
        if isinstance(kwargs.get("notes"), (list, tuple)):  # timm's notes are a tuple of lines
            kwargs["notes"] = " ".join(kwargs["notes"])
        return cls(**kwargs)


SOURCE_FIELDS = ("file", "hf_hub_id", "url", "source", "hf_hub_filename", "state_dict")
ZOO_FIELDS = ("filename", "paper", "notes", "extra")  # fields timm's PretrainedCfg lacks (or types otherwise)
_STR_FIELDS = {f.name for f in dataclasses.fields(PretrainedCfg) if f.type == "str"}
