"""Optimizers and schedules through timm: the numbers of the hand-written code they replaced.

The old loop's own formulas are written out here (``old_lr``) as the reference: cosine after warmup,
step decay and the Lion update are equal; the warmup is timm's (linear from ``warmup_lr`` at step 0 to
lr at step ``warmup_steps``), where the old one went from lr / W at step 0 to lr at step W - 1.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zoo.tasks.optim import check_optimizer, create_optimizer, create_scheduler

LR, W, TOTAL, MIN_RATIO = 1e-3, 10, 110, 0.1


def old_lr(step: int) -> float:
    """The removed ``lr_factor`` (cosine, warmup W, min ratio) times LR, step 0-based."""
    if step < W:
        return LR * (step + 1) / W
    progress = min((step - W) / (TOTAL - W), 1.0)
    return LR * (MIN_RATIO + (1 - MIN_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))


def _lrs(spec: dict, steps: list[int], total: int = TOTAL) -> list[float]:
    opt = create_optimizer(nn.Linear(2, 2), {"name": "adamw", "lr": LR})
    sched = create_scheduler(opt, spec, total)
    out = []
    for step in steps:
        sched.step_update(num_updates=step)  # what BaseTask.lr_scheduler_step does after `step` steps
        out.append(opt.param_groups[0]["lr"])
    return out


def test_adamw_cosine_with_warmup_lr_by_step():
    spec = {"name": "cosine", "warmup_steps": W, "min_lr_ratio": MIN_RATIO}
    cosine_steps = [10, 35, 60, 85, 109, 110, 500]
    # hand-computed: 1e-4 + 0.5 * 9e-4 * (1 + cos(pi * (step - 10) / 100)), held at 1e-4 after the end
    hand = [1e-3, 1e-4 + 4.5e-4 * (1 + math.cos(math.pi / 4)), 5.5e-4, 1e-4 + 4.5e-4 * (1 - math.cos(math.pi / 4)),
            1e-4 + 4.5e-4 * (1 + math.cos(math.pi * 0.99)), 1e-4, 1e-4]
    assert _lrs(spec, cosine_steps) == pytest.approx(hand, rel=1e-12)
    assert _lrs(spec, cosine_steps) == pytest.approx([old_lr(s) for s in cosine_steps], rel=1e-12)  # as before
    # warmup, timm's: from lr / W (the old first step's lr) by (lr - lr / W) / W a step
    warm = _lrs(spec, [0, 1, 5, 9])
    assert warm == pytest.approx([1e-4, 1.9e-4, 5.5e-4, 9.1e-4], rel=1e-12)
    assert warm[0] == pytest.approx(old_lr(0)) and [old_lr(s) for s in (1, 5, 9)] == pytest.approx([2e-4, 6e-4, 1e-3])
    # warmup_ratio: the same warmup as a fraction of the run
    assert _lrs({"name": "cosine", "warmup_ratio": W / TOTAL, "min_lr_ratio": MIN_RATIO}, [0, 60]) == \
        pytest.approx([1e-4, 5.5e-4], rel=1e-12)


def test_step_and_constant_schedules_as_before():
    assert _lrs({"name": "step", "step_size": 5, "gamma": 0.5}, [0, 4, 5, 10]) == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4])
    assert _lrs({"name": "constant", "warmup_steps": 4, "warmup_lr_ratio": 0.0}, [0, 2, 4, 99]) == \
        pytest.approx([0.0, 5e-4, 1e-3, 1e-3])
    torch_sched = {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 2, "gamma": 0.1}}
    opt = create_optimizer(nn.Linear(2, 2), {"class_path": "torch.optim.SGD", "init_args": {"lr": 1.0}})
    sched = create_scheduler(opt, torch_sched, TOTAL)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1.0, 1.0, 0.1, 0.1])


def _net() -> nn.Module:
    net = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
        net[0].bias.copy_(torch.tensor([0.25, -1.0]))
    return net


@pytest.mark.parametrize("spec", [{"name": "adamw", "lr": 0.1, "weight_decay": 0.5},
                                  {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.1, "weight_decay": 0.5}}])
def test_one_adamw_step_decays_weights_not_biases_or_norms(spec):
    net = _net()
    opt = create_optimizer(net, spec)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(net[0].weight)}  # timm's grouping: 1-D tensors (bias, norm) take no decay
    grads = [torch.tensor([[0.5, -0.1], [0.0, 2.0]]), torch.tensor([0.3, -0.3]), torch.tensor([1.0, -1.0]),
             torch.tensor([0.2, 0.0])]
    before = [p.detach().clone() for p in net.parameters()]
    for p, g in zip(net.parameters(), grads):
        p.grad = g
    opt.step()
    # AdamW's first step: p * (1 - lr * wd) - lr * g / (|g| + eps) (bias-corrected moments are g and g^2)
    for i, (p, p0, g) in enumerate(zip(net.parameters(), before, grads)):
        wd = 0.5 if i == 0 else 0.0
        torch.testing.assert_close(p.detach(), p0 * (1 - 0.1 * wd) - 0.1 * g / (g.abs() + 1e-8), rtol=1e-6, atol=1e-7)
    assert net[0].weight[0].tolist() == pytest.approx([0.95 - 0.1, -1.9 + 0.1], abs=1e-6)  # written out


def test_two_lion_steps_as_the_removed_lion():
    """timm's Lion against the removed implementation's update, written out: p *= 1 - lr * wd; p -= lr *
    sign(b1 * m + (1 - b1) * g); m = b2 * m + (1 - b2) * g."""
    net = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, -2.0, 3.0]]))
    opt = create_optimizer(net, {"name": "lion", "lr": 0.1, "weight_decay": 0.5, "betas": [0.9, 0.99]})
    assert type(opt).__name__ == "Lion"
    net.weight.grad = torch.tensor([[0.5, -0.1, 0.0]])
    opt.step()
    step1 = [1.0 * 0.95 - 0.1, -2.0 * 0.95 + 0.1, 3.0 * 0.95]  # sign(g); sign(0) = 0
    assert net.weight[0].tolist() == pytest.approx(step1, abs=1e-6)
    # momentum m = 0.01 * g1 = [0.005, -0.001, 0]; 0.9 m + 0.1 g2 = [0.0035, 0.0191, 0.03]: all positive,
    # so the first weight falls although its new gradient is negative
    net.weight.grad = torch.tensor([[-0.01, 0.2, 0.3]])
    opt.step()
    assert net.weight[0].tolist() == pytest.approx([w * 0.95 - 0.1 for w in step1], abs=1e-6)


def test_bad_specs_fail_with_the_fix():
    with pytest.raises(ValueError, match="did you mean 'lion'"):
        check_optimizer({"name": "lino"})
    with pytest.raises(TypeError, match="did you mean 'momentum'"):
        check_optimizer({"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, "momentun": 0.9}})
    with pytest.raises(ValueError, match="cannot be imported"):
        check_optimizer({"class_path": "torch.optim.NoSuch"})
    with pytest.raises(ValueError, match="into init_args"):
        check_optimizer({"class_path": "torch.optim.SGD", "lr": 0.1})
