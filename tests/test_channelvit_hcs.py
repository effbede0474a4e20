"""The ChannelViT paper's claim in miniature (Bao et al., ICLR 2024, Sec. 3.2): a ChannelViT
trained with Hierarchical Channel Sampling keeps much of its accuracy when channels are missing at test
time; the same model trained on all channels every step does not, while both do well with all channels.

Two tiny ChannelViTs (16x16 multi-channel digits, patch 8, width 32, 2 blocks) trained for 600 steps from
the same seed, one with ``enable_sample=True``, one without: seconds on one core, deterministic (fixed
seeds, one thread). The figures the run gives are in the comments beside each assertion.
"""
from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.data import MultiChannelDigitsDataModule

MODEL = {"img_size": 16, "patch_size": 8, "in_chans": 5, "embed_dim": 32, "depth": 2, "num_heads": 2,
         "num_classes": 10}
STEPS, BATCH, LR = 600, 32, 3e-3


@pytest.fixture(scope="module")
def digits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Train and test (images (N, 5, 16, 16), labels (N,)); noise 0.1 so one channel alone carries the class."""
    dm = MultiChannelDigitsDataModule(img_size=16, noise=0.1, max_shift=0)
    dm.setup()
    return {s: (dm.splits[s].load.images, torch.tensor(dm.splits[s].load.labels)) for s in ("train", "test")}


def _train(hcs: bool, x: torch.Tensor, y: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(0)  # the same init for both; HCS draws its subsets from this RNG too
    model = zoo.create("channelvit", **MODEL, enable_sample=hcs).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, LR, total_steps=STEPS, pct_start=0.1)
    batches = torch.Generator().manual_seed(0)  # the same batches for both
    for _ in range(STEPS):
        idx = torch.randint(0, len(y), (BATCH,), generator=batches)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained(digits) -> dict[str, torch.nn.Module]:
    """The two models, trained on one thread: the same sums in the same order, so the run is reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {"hcs": _train(True, *digits["train"]), "plain": _train(False, *digits["train"])}
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def _mean_top1(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, k: int) -> float:
    """Test top-1 given only k channels (named by their ids), averaged over every k-subset of the 5."""
    scores = [(model(x[:, list(chans)], torch.tensor(chans)).argmax(-1) == y).float().mean().item()
              for chans in itertools.combinations(range(x.shape[1]), k)]
    return sum(scores) / len(scores)


def test_hcs_keeps_accuracy_when_channels_are_missing(digits, trained):
    xte, yte = digits["test"]
    with_hcs, without = trained["hcs"], trained["plain"]
    hcs = {k: _mean_top1(with_hcs, xte, yte, k) for k in (1, 2, 5)}
    plain = {k: _mean_top1(without, xte, yte, k) for k in (1, 2, 5)}
    print(f"top-1 by test channels, HCS: {hcs}; without HCS: {plain}")
    assert hcs[5] > 0.8 and plain[5] > 0.8  # all channels: both learnt the task (0.93, 0.91; chance 0.1)
    assert hcs[1] > plain[1] + 0.1  # one channel: 0.65 vs 0.43 (other seeds: +0.21, +0.15)
    assert hcs[2] > plain[2] + 0.08  # two channels: 0.80 vs 0.61 (other seeds: +0.20, +0.09)
    assert hcs[1] > 0.5 and hcs[1] < hcs[2] < hcs[5]  # graceful: every channel added helps


def test_quantized_hcs_model_keeps_its_accuracy(digits, trained):
    """w8a8 within 0.5 point of fp32 top-1 on the test split (269 images: one image is 0.37 points), w4a8
    with RepQ-ViT's LayerNorm reparameterization or AWQ within 2 points, with all channels and alone."""
    xte, yte = digits["test"]
    calib = [digits["train"][0][i:i + 64] for i in range(0, 256, 64)]  # 4 batches of all-channel images
    fp32 = {k: _mean_top1(trained["hcs"], xte, yte, k) for k in (1, 5)}
    for spec, method, points in (("w8a8", "rtn", 0.5), ("w4a8", "repq", 2.0), ("w4a8", "awq", 2.0)):
        quantized = zoo.quantize(copy.deepcopy(trained["hcs"]), spec, calib=calib, method=method)
        assert sum(r.action == "quantized" for r in quantized.quant_report) == 8  # every Linear but the head (classifier)
        with torch.no_grad():
            assert not torch.equal(quantized(xte[:8]), trained["hcs"](xte[:8]))  # integer layers do run
        for k, want in fp32.items():
            got = _mean_top1(quantized, xte, yte, k)
            print(f"{spec} {method} {k} channel(s): {got:.4f} vs fp32 {want:.4f}")
            assert abs(got - want) * 100 <= points, (spec, method, k, got, want)
