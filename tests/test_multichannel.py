"""Multi-channel data: folders of .npy/.npz stacks, So2Sat's layout, multi-view digits, and the
classification task passing ``channel_ids`` to the model."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from zoo.data import (
    DATAMODULES,
    DigitsDataModule,
    MultiChannelDigitsDataModule,
    MultiChannelFolderDataModule,
    so2sat,
)
from zoo.data.multichannel import channel_stats
from zoo.data.multichannel_digits import digit_views
from zoo.tasks import ClassificationTask

HAS_H5PY = importlib.util.find_spec("h5py") is not None


def _stack_folder(root: Path, n: int = 12, chans: int = 4, size: int = 8, kind: str = "npy", split: bool = True,
                  names: bool = True) -> dict[str, np.ndarray]:
    """``n`` random (chans, size, size) stacks and labels.csv; returns {file: array}."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    lines, arrays = ["file,label" + (",split" if split else "")], {}
    for i in range(n):
        a = (rng.normal(size=(chans, size, size)) * np.arange(1, chans + 1)[:, None, None] + 10 * np.arange(chans)[:, None, None]).astype(np.float32)
        name = f"s{i}.{kind}"
        (np.save if kind == "npy" else lambda p, x: np.savez(p, data=x, other=x[:1]))(root / name, a)
        arrays[name] = a
        label = ["cat", "dog", "emu"][i % 3] if names else str(i % 3)
        lines.append(f"{name},{label}" + ("," + ("train" if i < 8 else "val" if i < 10 else "test") if split else ""))
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return arrays


def test_npy_folder_split_column_stats_and_eval_output(tmp_path):
    arrays = _stack_folder(tmp_path)
    dm = MultiChannelFolderDataModule(str(tmp_path), img_size=8, batch_size=4, num_workers=0)
    assert (dm.num_classes, dm.classes, dm.in_chans, dm.total_chans) == (3, ["cat", "dog", "emu"], 4, 4)
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 8, "val": 2, "test": 2}
    train = np.stack([arrays[f"s{i}.npy"] for i in range(8)])  # (8, C, H, W)
    mean, std = train.mean(axis=(0, 2, 3)), train.std(axis=(0, 2, 3))
    torch.testing.assert_close(dm.stats[0], torch.tensor(mean), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dm.stats[1], torch.tensor(std), rtol=1e-5, atol=1e-5)
    x, y = next(iter(dm.val_dataloader()))  # no subset: (x, y) only
    expect = (arrays["s8.npy"] - mean[:, None, None]) / std[:, None, None]
    torch.testing.assert_close(x[0], torch.tensor(expect), rtol=1e-4, atol=1e-4)
    assert y.tolist() == [8 % 3, 9 % 3]
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 4, 8, 8) and abs(x.mean().item()) < 1.0  # normalised


def test_npz_folder_seeded_split_subset_and_given_stats(tmp_path):
    arrays = _stack_folder(tmp_path, n=30, kind="npz", split=False, names=False, size=10)
    kw = {"root": str(tmp_path), "img_size": 6, "crop_pct": 0.6, "batch_size": 5, "num_workers": 0, "npz_key": "data"}
    dm = MultiChannelFolderDataModule(**kw, channels=[2, 0], val_fraction=0.2, test_fraction=0.2)
    assert (dm.num_classes, dm.classes, dm.in_chans, dm.total_chans) == (3, None, 2, 4)
    assert dm.channel_ids.tolist() == [2, 0]
    same = MultiChannelFolderDataModule(**kw, channels=[2, 0], val_fraction=0.2, test_fraction=0.2)
    assert all(torch.equal(dm.indices[s], same.indices[s]) for s in ("train", "val", "test"))
    assert [len(dm.indices[s]) for s in ("train", "val", "test")] == [18, 6, 6]
    dm.setup()
    x, _, ids = next(iter(dm.train_dataloader()))  # a subset: the ids travel with the batch
    assert x.shape == (5, 2, 6, 6) and ids.shape == (5, 2) and (ids == torch.tensor([2, 0])).all()
    measured = channel_stats(list(arrays.values())[i] for i in dm.indices["train"].tolist())
    torch.testing.assert_close(dm.stats[0], measured[0][[2, 0]])
    # given statistics: one per source channel (indexed by the subset) or one per kept channel
    per_source = MultiChannelFolderDataModule(**kw, channels=[2, 0], mean=[0, 1, 2, 3], std=[1, 1, 4, 1])
    per_kept = MultiChannelFolderDataModule(**kw, channels=[2, 0], mean=[2, 0], std=[4, 1])
    for d in (per_source, per_kept):
        d.setup()
        assert d.stats[0].tolist() == [2, 0] and d.stats[1].tolist() == [4, 1]
    x, _, _ = next(iter(per_kept.val_dataloader()))
    first = list(arrays.values())[int(per_kept.indices["val"][0])]
    centre = torch.tensor(first[[2, 0], 2:8, 2:8])  # 10 = 6 / crop_pct: no resize, a centre crop
    torch.testing.assert_close(x[0], (centre - torch.tensor([2.0, 0.0])[:, None, None]) / torch.tensor([4.0, 1.0])[:, None, None])


def test_folder_errors_name_the_problem(tmp_path):
    root = tmp_path / "d"
    _stack_folder(root)
    with pytest.raises(FileNotFoundError, match="labels CSV .*missing.csv"):
        MultiChannelFolderDataModule(str(root), labels_csv="missing.csv")
    (root / "bad.csv").write_text("path,class\nx.npy,1\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['file', 'label'\]"):
        MultiChannelFolderDataModule(str(root), labels_csv="bad.csv")
    (root / "bad.csv").write_text("file,label\ns1.npy,\ns0.npy,0\n")
    with pytest.raises(ValueError, match=r"line\(s\) \[2\] lack a file or a label"):
        MultiChannelFolderDataModule(str(root), labels_csv="bad.csv")
    with pytest.raises(ValueError, match="crop_pct must be in"):
        MultiChannelFolderDataModule(str(root), crop_pct=1.2)
    (root / "bad.csv").write_text("file,label\nnope.npy,1\ns0.npy,0\n")
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        MultiChannelFolderDataModule(str(root), labels_csv="bad.csv")
    (root / "x.tif").write_bytes(b"")
    (root / "bad.csv").write_text("file,label\nx.tif,1\ns0.npy,0\n")
    with pytest.raises(ValueError, match=r"unsupported file type.*\.tif"):
        MultiChannelFolderDataModule(str(root), labels_csv="bad.csv")
    np.save(root / "flat.npy", np.zeros((8, 8), np.float32))
    (root / "bad.csv").write_text("file,label\nflat.npy,1\ns0.npy,0\n")
    with pytest.raises(ValueError, match=r"flat.npy holds an array of shape \(8, 8\).*\(C, H, W\)"):
        MultiChannelFolderDataModule(str(root), labels_csv="bad.csv")
    np.save(root / "three.npy", np.zeros((3, 8, 8), np.float32))
    (root / "bad.csv").write_text("file,label\nthree.npy,1\ns0.npy,0\n")
    with pytest.raises(ValueError, match="disagree on the channel count: 3 in .*three.npy, 4 in .*s0.npy"):
        MultiChannelFolderDataModule(str(root), labels_csv="bad.csv")
    (root / "bad.csv").write_text("file,label,split\ns0.npy,1,train\ns1.npy,0,valid\n")
    with pytest.raises(ValueError, match=r"split values \['valid'\]"):
        MultiChannelFolderDataModule(str(root), labels_csv="bad.csv")
    with pytest.raises(ValueError, match=r"channels=\[0, 4\].*0\.\.3.*\[4\] out of range"):
        MultiChannelFolderDataModule(str(root), channels=[0, 4])
    with pytest.raises(ValueError, match="mean has 3 values; give one per source channel"):
        MultiChannelFolderDataModule(str(root), channels=[0, 1], mean=[0, 0, 0], std=[1, 1])
    npz = tmp_path / "z"
    _stack_folder(npz, kind="npz")
    with pytest.raises(KeyError, match=r"holds arrays \['data', 'other'\], not 'image'; set npz_key"):
        MultiChannelFolderDataModule(str(npz), npz_key="image")
    assert MultiChannelFolderDataModule(str(npz)).total_chans == 4  # default: the first array


class _FakeH5(dict):
    """A dict standing in for an open ``h5py.File`` (same indexing, a context manager)."""

    def __enter__(self) -> _FakeH5:
        return self

    def __exit__(self, *exc) -> None:
        pass


def _so2sat_arrays(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    label = np.eye(17)[rng.integers(0, 17, n)]
    return {"sen1": rng.normal(size=(n, 32, 32, 8)), "sen2": rng.random((n, 32, 32, 10)) + 1, "label": label}


def test_so2sat_layout_and_data_module(tmp_path, monkeypatch):
    files = {name: _so2sat_arrays(n, i) for i, (name, n) in enumerate((("training.h5", 6), ("validation.h5", 3)))}
    if HAS_H5PY:
        import h5py

        for name, arrays in files.items():
            with h5py.File(tmp_path / name, "w") as f:
                for k, v in arrays.items():
                    f[k] = v
    else:  # the array handling without h5py: the files exist, their contents come from the dicts
        for name in files:
            (tmp_path / name).write_bytes(b"")
        monkeypatch.setattr(so2sat, "open_h5", lambda path: _FakeH5(files[Path(path).name]))
    sample, label = so2sat.so2sat_sample(files["training.h5"]["sen1"][1], files["training.h5"]["sen2"][1],
                                         files["training.h5"]["label"][1])
    assert sample.shape == (18, 32, 32) and sample.dtype == np.float32 and label == files["training.h5"]["label"][1].argmax()
    np.testing.assert_allclose(sample[9], files["training.h5"]["sen2"][1][..., 1], rtol=1e-6)  # id 9 = sen2 band 1
    dm = DATAMODULES["so2sat"](str(tmp_path), test_file=None, batch_size=3, num_workers=0, channels=[0, 9, 17])
    assert (dm.num_classes, dm.in_chans, dm.total_chans) == (17, 3, 18)
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 6, "val": 3, "test": 3}
    x, y, ids = next(iter(dm.test_dataloader()))
    assert x.shape == (3, 3, 32, 32) and ids[0].tolist() == [0, 9, 17]
    assert y.tolist() == files["validation.h5"]["label"].argmax(1).tolist()
    assert abs(dm.stats[0][1].item() - files["training.h5"]["sen2"][..., 1].mean()) < 1e-4
    with pytest.raises(FileNotFoundError, match="testing.h5 does not exist; set test_file: null"):
        DATAMODULES["so2sat"](str(tmp_path))


def test_so2sat_checks_and_missing_h5py(tmp_path, monkeypatch):
    good = _so2sat_arrays(2, 0)
    assert so2sat.check_so2sat(good, "f.h5") == 2
    with pytest.raises(KeyError, match=r"f.h5 lacks \['sen2'\]"):
        so2sat.check_so2sat({k: v for k, v in good.items() if k != "sen2"}, "f.h5")
    with pytest.raises(ValueError, match="sen1 .* are not"):
        so2sat.check_so2sat({**good, "sen1": good["sen1"][..., :7]}, "f.h5")
    with pytest.raises(ValueError, match="one-hot"):
        so2sat.check_so2sat({**good, "label": good["label"][:, :10]}, "f.h5")
    monkeypatch.setitem(sys.modules, "h5py", None)  # as if h5py were not installed: import h5py fails
    with pytest.raises(ImportError, match="training.h5 needs h5py.*pip install h5py"):
        so2sat.open_h5(tmp_path / "training.h5")


@pytest.fixture(scope="module")
def digits() -> MultiChannelDigitsDataModule:
    dm = MultiChannelDigitsDataModule(max_shift=0)
    dm.setup()
    return dm


def _split(dm: MultiChannelDigitsDataModule, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    source = dm.splits[split].load
    return source.images, torch.tensor(source.labels)  # (N, V, S, S), (N,)


def test_digit_views_shapes_determinism_and_split(digits):
    assert (digits.in_chans, digits.total_chans, digits.num_classes) == (5, 5, 10)
    small = torch.rand(6, 1, 32, 32)
    a, b, c = (digit_views(small, digits.views, 0.3, seed) for seed in (0, 0, 1))
    assert a.shape == (6, 5, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)  # the seed draws the noise
    plain = DigitsDataModule()
    plain.setup()
    assert all(torch.equal(digits.indices[s], plain.indices[s]) for s in ("train", "val", "test"))
    x, y = next(iter(digits.train_dataloader()))
    assert x.shape == (64, 5, 32, 32) and y.shape == (64,)
    images = _split(digits, "train")[0]
    torch.testing.assert_close(images.mean(dim=(0, 2, 3)), torch.zeros(5), atol=1e-4, rtol=0)
    corr = torch.corrcoef(images.transpose(0, 1).flatten(1))  # (V, V) between channels
    assert (corr - torch.eye(5)).abs().max() < 0.7  # the views differ


def test_each_view_carries_signal_and_more_views_help(digits):
    (train, ytr), (test, yte) = _split(digits, "train"), _split(digits, "test")

    def nearest_centroid(chans: list[int]) -> float:
        a, b = train[:, chans].flatten(1), test[:, chans].flatten(1)  # (N, |chans| * S * S)
        centroids = torch.stack([a[ytr == c].mean(0) for c in range(10)])
        return (torch.cdist(b, centroids).argmin(1) == yte).float().mean().item()

    single = [nearest_centroid([c]) for c in range(5)]
    assert min(single) > 0.3, single  # chance is 0.1
    assert nearest_centroid(list(range(5))) > sum(single) / 5 + 0.1, single


def test_digits_subset_batches_and_errors():
    dm = MultiChannelDigitsDataModule(channels=[4, 1], limit=8, batch_size=4)
    dm.setup()
    x, _, ids = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 2, 32, 32) and ids.tolist() == [[4, 1]] * 4 and dm.in_chans == 2
    with pytest.raises(ValueError, match="unknown view"):
        MultiChannelDigitsDataModule(views=["image", "egdes"])
    with pytest.raises(ValueError, match="out of range"):
        MultiChannelDigitsDataModule(channels=[5])


class _Recorder(nn.Module):
    """A stand-in model that records the keyword arguments of every call."""

    num_classes = 10

    def __init__(self, in_chans: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_chans, 10)
        self.calls: list[dict] = []

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        self.calls.append({k: v.clone() for k, v in kwargs.items()})
        return self.fc(x.mean(dim=(2, 3)))


class _Plain(nn.Module):
    """A model without a ``channel_ids`` argument."""

    num_classes = 10

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_task_passes_channel_ids_only_when_the_batch_has_them():
    x, y, ids = torch.randn(4, 2, 8, 8), torch.tensor([0, 1, 2, 3]), torch.tensor([[3, 1]] * 4)
    task = ClassificationTask(_Recorder(2), ema_decay=0.9, mixup_alpha=0.2, cutmix_alpha=1.0)
    task.training_step((x, y, ids), 0)  # mixup + cutmix on, the ids still reach the model
    task.validation_step((x, y, ids), 0)  # raw and EMA weights
    probs = task.predict_step((x, y, ids), 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))
    calls = task.model.calls + task.ema.module.calls
    assert len(calls) == 4 and all(torch.equal(c["channel_ids"], ids) for c in calls)
    task.model.calls.clear()
    task.training_step((x, y), 0)
    task.predict_step((x,), 0)
    assert task.model.calls == [{}, {}]
    plain = ClassificationTask(_Plain(), ema_decay=0.9)  # other models keep model(x)
    plain.training_step((x, y), 0)
    plain.validation_step((x, y), 0)


def test_task_fits_on_a_channel_subset(tmp_path):
    dm = MultiChannelDigitsDataModule(channels=[0, 3], limit=16, batch_size=8)
    task = ClassificationTask(_Recorder(2), mixup_alpha=0.2)
    trainer = L.Trainer(max_steps=2, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path), accelerator="cpu")
    trainer.fit(task, datamodule=dm)
    assert trainer.global_step == 2 and task.model.calls
    assert all(c["channel_ids"].tolist() == [[0, 3]] * 8 for c in task.model.calls)
