"""Where weights come from: local files and folders, the Hugging Face hub, URLs; and saving.

Nothing is downloaded when a cached copy exists. An offline machine gets an error that names the
file to place and where.
"""
from __future__ import annotations

import json
import numbers
import os
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from .checkpoint import DIGEST_KEY, content_digest, read_checkpoint
from .files import atomic_write, cache_dir
from .model_card import model_card
from .network import offline, offline_reason, reachable
from .pretrained import PretrainedCfg
from .quant.io import read_quant_metadata, save_quantized

WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
CONFIG_NAME = "config.json"
MAX_CLASSES = 1_000_000  # far above any data set's; a larger count is a typo or a corrupt config
URL_SCHEMES = ("http://", "https://", "file://")


@dataclass
class Weights:
    """A loaded state dict, where it came from, and the config.json that travelled with it."""

    state_dict: dict
    source: str
    config: dict | None = None


def _unavailable(url: str) -> str:
    """Why ``url`` cannot be fetched now ('' when it can be tried): an offline switch, or a server that
    does not answer the connection probe (the client's own retries would take a minute to say so)."""
    if offline():
        return offline_reason()
    return "" if reachable(url) else f"{urlparse(url).hostname} cannot be reached"


def download_cached(url: str, filename: str | None = None) -> Path:
    """The cached copy of ``url``, downloaded once (atomically, with a progress bar) if missing."""
    target = cache_dir() / (filename or Path(urlparse(url).path).name)
    if target.is_file():
        return target
    place = f"download it on a connected machine and place it at {target} (or pass pretrained='<path to the file>')"
    if why := _unavailable(url):
        raise FileNotFoundError(f"weights {url} are not cached and cannot be downloaded here ({why}); {place}")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        # torch writes to a temporary file and renames it, so an interrupted download leaves nothing
        torch.hub.download_url_to_file(url, str(target), progress=True)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise FileNotFoundError(f"could not download {url} ({exc}); {place}") from None
    return target


def _hf_download(repo_id: str, filename: str, revision: str | None) -> Path | None:
    """A file of a hub repository through the HF cache; None when the repository lacks it."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    if why := _unavailable(constants.ENDPOINT):
        # a lookup in the cache only: even with local_files_only, the client's download call contacts the
        # hub once per process, and without a cached copy it retries for a minute
        cached = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(cached, str):
            return Path(cached)
        if cached is not None:  # the cache records that the repository lacks the file
            return None
        raise _not_in_hf_cache(repo_id, filename, why)
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: it must be caught first
        raise _not_in_hf_cache(repo_id, filename, "the download failed") from None
    except EntryNotFoundError:
        return None


def _not_in_hf_cache(repo_id: str, filename: str, why: str) -> FileNotFoundError:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    return FileNotFoundError(
        f"hf-hub:{repo_id} ({filename}) is not in the Hugging Face cache and cannot be downloaded here ({why}): "
        f"run `hf download {repo_id}` on a connected machine and copy its cache folder to {folder}, or download "
        f"the repository and pass pretrained='local-dir:<folder>'")


def _read_config(path: Path | None) -> dict | None:
    if path is None or not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    check_config(config, str(path))
    return config


def check_num_classes(value: object, where: str) -> None:
    """Refuse a class count no head should have, before anything is built: a negative one silently builds
    a headless model, a string fails deep inside a comparison, and 10**9 tries a terabyte allocation."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"num_classes must be an int in 0..{MAX_CLASSES} (0: no classifier), but {where} gives "
                        f"{value!r}")
    if not 0 <= value <= MAX_CLASSES:
        raise ValueError(f"num_classes must lie in 0..{MAX_CLASSES} (0: no classifier), but {where} gives {value}")


def check_config(config: object, where: str) -> None:
    """Check the fields of a saved model's config.json that ``zoo.create`` builds from, so a damaged or
    hand-edited file fails with its name instead of as an AttributeError or a huge allocation."""
    if not isinstance(config, dict):
        raise ValueError(f"{where} must hold a JSON object with 'architecture' and 'model_args'; got a "
                         f"{type(config).__name__}")
    arch = config.get("architecture")
    if "architecture" in config and (not isinstance(arch, str) or not arch):
        raise ValueError(f"{where}: 'architecture' must be the name of a model, such as \"resnet50\"; got {arch!r}")
    for key in ("model_args", "pretrained_cfg", "zoo", "pruned"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise ValueError(f"{where}: {key!r} must be a JSON object of names and values; got a "
                             f"{type(config[key]).__name__} ({config[key]!r:.60})")
    if "num_classes" in config:
        check_num_classes(config["num_classes"], where)
    if "num_classes" in (config.get("model_args") or {}):
        check_num_classes(config["model_args"]["num_classes"], f"{where} (in model_args)")


def locate_folder_weights(folder: Path) -> Path:
    for name in WEIGHTS_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"folder {str(folder)!r} holds none of {', '.join(WEIGHTS_NAMES)}")


def fetch_hf_hub(hub_id: str) -> tuple[Path, dict | None]:
    """Weights file and config of ``org/repo[@revision]``."""
    repo_id, _, revision = hub_id.partition("@")
    not_cached = None
    for name in WEIGHTS_NAMES:
        try:
            path = _hf_download(repo_id, name, revision or None)
        except FileNotFoundError as exc:  # offline and not cached: another weights file may be
            not_cached = not_cached or exc
            continue
        if path is not None:
            return path, read_source_config(f"hf-hub:{hub_id}")
    if not_cached is not None:
        raise not_cached
    raise FileNotFoundError(f"hf-hub:{hub_id} holds none of {', '.join(WEIGHTS_NAMES)}")


def read_source_config(spec: object, required: bool = False) -> dict | None:
    """The config.json of a folder or hub source, without loading weights (None for other sources).

    A hub config that is not cached on an offline machine is None, unless ``required``.
    """
    if not isinstance(spec, (str, os.PathLike)):
        return None
    spec = os.fspath(spec)
    if spec.startswith("hf-hub:"):
        repo_id, _, revision = spec[len("hf-hub:"):].partition("@")
        try:
            return _read_config(_hf_download(repo_id, CONFIG_NAME, revision or None))
        except FileNotFoundError:
            if required:
                raise
            return None
    folder = local_path(spec)
    return _read_config(folder / CONFIG_NAME) if folder.is_dir() else None


@dataclass
class Source:
    """``pretrained`` resolved once: the local file (or state dict) holding the weights, and what
    travels with it: a folder's or hub repository's config.json, and a quantized file's record."""

    label: str  # where the weights came from, as messages and ``pretrained_cfg['file']`` name it
    path: Path | None = None
    state_dict: dict | None = None
    config: dict | None = None
    quant: dict | None = None
    from_cfg: bool = False  # the architecture's own release weights (pretrained=True or a tag)

    def read(self) -> Weights:
        """The weights, read once (tensors only)."""
        state = self.state_dict if self.state_dict is not None else read_checkpoint(self.path)
        return Weights(state, self.label, self.config)


def local_path(spec: str | os.PathLike) -> Path:
    """A local file or folder named by ``spec``, with timm's ``local-dir:`` prefix taken off."""
    text = os.fspath(spec)
    return Path(text[len("local-dir:"):] if text.startswith("local-dir:") else text).expanduser()


def resolve_source(spec: object, cfg: PretrainedCfg) -> Source:
    """Resolve ``pretrained=spec`` (True: ``cfg``'s weights; a tag is resolved to its cfg before this)
    to a local file, fetching it once if needed.

    Accepted: a state dict, a path to a file or folder, ``local-dir:``, ``hf-hub:org/repo[@rev]``, or
    a URL; ``True`` takes the cfg's ``file``, ``hf_hub_id``, ``url`` or hand-placed ``filename``.
    """
    if isinstance(spec, dict):
        return Source("<state dict>", state_dict=spec)
    if spec is True:
        source = _cfg_source(cfg)
    elif not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"pretrained must be a bool, tag, path, 'hf-hub:...', URL or state dict; got {type(spec).__name__}")
    elif (text := os.fspath(spec)).startswith("hf-hub:"):
        path, config = fetch_hf_hub(text[len("hf-hub:"):])
        source = Source(text, path, config=config)
    elif text.startswith(URL_SCHEMES):
        source = Source(text, download_cached(text))
    else:
        path = local_path(text)
        if path.is_dir():
            source = Source(str(path), locate_folder_weights(path), config=_read_config(path / CONFIG_NAME))
        elif path.is_file():
            source = Source(str(path), path)
        else:
            raise FileNotFoundError(f"pretrained={text!r} is not a tag of {cfg.architecture!r}, an existing "
                                    f"file or folder, 'hf-hub:org/repo' or a URL")
    source.quant = read_quant_metadata(source.path) if source.path is not None else None
    return source


def _cfg_source(cfg: PretrainedCfg) -> Source:
    if cfg.file:
        return Source(cfg.file, Path(cfg.file).expanduser(), from_cfg=True)
    if cfg.hf_hub_id:
        path, config = fetch_hf_hub(cfg.hf_hub_id)
        return Source(f"hf-hub:{cfg.hf_hub_id}", path, config=config, from_cfg=True)
    if cfg.url:
        return Source(cfg.url, download_cached(cfg.url, cfg.filename or None), from_cfg=True)
    if cfg.filename:
        path = cache_dir() / cfg.filename
        if not path.is_file():
            raise FileNotFoundError(f"{cfg.name} weights have no direct download link: get {cfg.filename} from "
                                    f"{cfg.origin_url or 'the authors'} and place it at {path} (or pass "
                                    f"pretrained='<path to the file>')")
        return Source(str(path), path, from_cfg=True)
    raise ValueError(f"{cfg.name} has no pretrained weights; pretrained tags: "
                     "see zoo.list_pretrained('" + cfg.architecture + "*')")


def save_pretrained(model: nn.Module, directory: str | os.PathLike, model_args: dict | None = None,
                    metrics: dict[str, float] | None = None, dataset: str = "") -> Path:
    """Write ``model.safetensors``, ``config.json`` (timm's hub layout) and a model card ``README.md``
    (the hub's metadata block; ``metrics`` such as ``{"top1": 0.81}``, measured on ``dataset``, go in
    it) to ``directory``.

    ``zoo.create(arch, pretrained=directory)``, ``zoo.create('local-dir:' + directory)`` and, once
    uploaded (:func:`push_to_hub`), ``hf-hub:`` read them back.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    arch = cfg.get("architecture") or getattr(model, "architecture", "")
    if not arch:
        raise ValueError("save_pretrained needs a model built by zoo.create (it records the architecture)")
    args = dict(getattr(model, "model_args", {}) or {}) if model_args is None else dict(model_args)
    if hasattr(model, "num_classes"):  # classifiers; an SR model has no classes to record
        args.setdefault("num_classes", model.num_classes)
    if hasattr(model, "in_chans"):
        args.setdefault("in_chans", model.in_chans)
    cfg.update(architecture=arch, file="", hf_hub_id="", url="", filename="")
    config = {"architecture": arch}
    if "num_classes" in args:
        cfg["num_classes"] = config["num_classes"] = args["num_classes"]
    # timm's key set, so timm.create_model(..., pretrained_cfg_overlay=dict(file=...)) and timm's
    # local-dir: read the folder too; the zoo's own fields go under their own key
    timm_cfg, own = PretrainedCfg.from_dict(cfg).split_for_timm()
    config.update(num_features=getattr(model, "num_features", None), model_args=args, pretrained_cfg=timm_cfg)
    if own:
        config["zoo"] = {"pretrained_cfg": own}
    if getattr(model, "prune_record", None):  # each pruned layer's widths: zoo.create replays them before loading
        config["pruned"] = model.prune_record
    if getattr(model, "quant_spec", None) is not None:  # packed weights, scales and the spec in the header
        config["quant"] = model.quant_spec.name
        save_quantized(model, directory / "model.safetensors")
    else:
        tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        metadata = {"format": "pt", DIGEST_KEY: content_digest(tensors)}  # checked by every read
        atomic_write(directory / "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata=metadata))
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2, default=list) + "\n"))
    card = model_card(model, config, metrics, dataset)
    atomic_write(directory / "README.md", lambda tmp: Path(tmp).write_text(card, encoding="utf-8"))
    return directory


def push_to_hub(model: nn.Module, repo_id: str, *, token: str | None = None, private: bool = False,
                commit_message: str = "Upload model", metrics: dict[str, float] | None = None,
                dataset: str = "", model_args: dict | None = None) -> str:
    """Save ``model`` as :func:`save_pretrained` does and upload the folder to the Hugging Face hub
    repository ``repo_id`` (created if missing); returns the commit's URL. ``zoo.create("hf-hub:" +
    repo_id, pretrained=True)`` and, for the architectures timm has, timm read it back."""
    import tempfile

    from huggingface_hub import HfApi

    if offline():
        raise RuntimeError(f"push_to_hub({repo_id!r}): this machine is offline (ZOO_OFFLINE / HF_HUB_OFFLINE); "
                           f"save_pretrained the model here and upload the folder from a connected machine")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="zoo-push-") as folder:
        save_pretrained(model, folder, model_args=model_args, metrics=metrics, dataset=dataset)
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
    return str(getattr(commit, "commit_url", commit))
