"""zoo.prune: dependency groups of every supported family, the criteria, the targets, the saved record."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import zoo
from zoo.pruning import IMPORTANCE, PruneTarget, apply_record
from zoo.pruning.replay import shrink

# tiny members of each family: (name, model arguments, input)
FAMILIES = {
    "seresnet18": (dict(num_classes=5, layers=(1, 1, 1, 1)), (2, 3, 32, 32)),
    "eca_resnet18": (dict(num_classes=5, layers=(1, 1, 1, 1)), (2, 3, 32, 32)),
    "fcanet34": (dict(num_classes=5, layers=(1, 1, 1, 1)), (2, 3, 32, 32)),
    "ecaresnet50d": (dict(num_classes=5, layers=(1, 1, 1, 1), global_pool="catavgmax"), (2, 3, 16, 16)),
    "rcan": (dict(scale=2, n_resgroups=2, n_resblocks=2, n_feats=16, reduction=4), (2, 3, 12, 12)),
    "han": (dict(n_resblocks=1, n_feats=16, reduction=4), (1, 3, 8, 8)),
    "channelvit": (dict(img_size=16, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=4, num_classes=3),
                   (2, 3, 16, 16)),
    "moc_lm": (dict(vocab_size=50, dim=32, n_layers=2, n_heads=4, hidden_dim=64, top_k=16), (2, 8)),
}


def _make(arch: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    kwargs, shape = FAMILIES[arch]
    torch.manual_seed(seed)
    model = zoo.create(arch, **kwargs).eval()
    with torch.no_grad():  # random BN statistics and gammas, so no criterion sees all-equal channels
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.2, 1.0)
                module.running_var.uniform_(0.5, 2.0)
    if arch == "moc_lm":
        return model, torch.randint(0, 50, shape, generator=torch.Generator().manual_seed(seed))
    x = torch.rand(shape) if arch in ("rcan", "han") else torch.randn(shape)
    return model, x


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_pruned_family_runs_forward_and_backward_with_the_original_output_shape(arch):
    model, x = _make(arch)
    expected = model(x).shape
    full = sum(p.numel() for p in model.parameters())
    amount = 0.3 if arch == "moc_lm" else 0.5  # the LM's width stays (tied to the embedding): its tokens' MACs
    zoo.prune(model, f"flops={amount}", importance="gate", calib=[x])
    removed = 1 - model.prune_report.macs[1] / model.prune_report.macs[0]
    assert amount <= removed < amount + 0.12, removed  # the target, to within one trunk channel's or head's share
    assert sum(p.numel() for p in model.parameters()) < full
    model.train()
    out = model(x)
    assert out.shape == expected
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad
               and p.grad is not None)


@pytest.mark.parametrize("importance", sorted(IMPORTANCE))
def test_every_criterion_meets_a_flops_and_a_params_target(importance):
    for target, field in (("flops=0.3", "macs"), ("params=0.3", "params")):
        model, x = _make("seresnet18")
        zoo.prune(model, target, importance=importance, calib=[x])
        before, after = getattr(model.prune_report, field)
        assert 0.3 <= 1 - after / before < 0.36, (target, 1 - after / before)
        assert model(x).shape == (2, 5)


def test_a_latency_target_costs_each_layer_at_the_widths_the_plan_gives_it(monkeypatch):
    """With a timer that returns a layer's MACs, a latency target is a FLOPs target: the same channels go. That
    holds only if every group's cut reaches the right input and output width of every layer it touches."""
    from zoo.pruning import latency, plan_pruning

    def macs_timer(layer, example, cin, cout):
        if isinstance(layer, nn.Conv2d):  # (B, C, H, W) in: the output positions of that kernel and stride
            positions = 1
            for i, size in enumerate(example.shape[2:]):
                span = size + 2 * layer.padding[i] - layer.dilation[i] * (layer.kernel_size[i] - 1) - 1
                positions *= span // layer.stride[i] + 1
            groups = cin if layer.groups > 1 else 1
            return float(cin // groups * cout * layer.kernel_size[0] * layer.kernel_size[1] * positions)
        return float(cin * cout * example[..., 0].numel() / example.shape[0])  # (B, ..., C) in: tokens per sample

    monkeypatch.setattr(latency, "time_layer", macs_timer)
    for arch in ("seresnet18", "rcan", "channelvit"):
        model, x = _make(arch)
        by_time = plan_pruning(model, "latency=0.4", importance="l1", example_input=x)
        by_macs = plan_pruning(model, "flops=0.4", importance="l1", example_input=x)
        assert by_time.report.widths == by_macs.report.widths, arch
        before, after = by_time.report.latency
        assert after <= 0.6 * before and after == pytest.approx(sum(_timed_layers(model, by_time, x, macs_timer)))


def test_the_latency_model_times_a_depthwise_conv_at_its_one_width():
    from zoo.pruning import Group
    from zoo.pruning.latency import LatencyModel

    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 4, 1)).eval()
    group = Group("c").add("0", "out").add("1", "channels").add("2", "in")
    seen = []
    timed = LatencyModel(net, [group], torch.rand(1, 3, 16, 16),
                         timer=lambda layer, x, cin, cout: seen.append((cin, cout)) or float(cin * cout))
    assert timed.estimate([3]) == 3 * 5 + 5 * 5 + 5 * 4  # the depthwise conv at 5 in and 5 out
    assert (5, 5) in seen and timed.full == 3 * 8 + 8 * 8 + 8 * 4


def test_time_layer_runs_each_layer_kind_at_the_widths_asked_and_the_report_prints_the_time(monkeypatch):
    """The real clock on a conv, a depthwise conv and a linear at cut widths (no assertion on how long: the
    machine may be busy); the bisection itself is checked with a formula for a timer, so no test hangs on
    a measurement."""
    from zoo.pruning import latency

    cases = [(nn.Conv2d(8, 16, 3, padding=1), torch.rand(1, 8, 12, 12), 4, 6),
             (nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.rand(1, 8, 12, 12), 4, 4),
             (nn.Linear(8, 16), torch.rand(2, 5, 8), 3, 7)]
    for layer, x, cin, cout in cases:
        ms = latency.time_layer(layer, x, cin, cout, repeats=2)
        assert 0 < ms < 1e4, (layer, ms)
    monkeypatch.setattr(latency, "time_layer", lambda layer, x, cin, cout: float(cin * cout))
    model, x = _make("rcan")
    zoo.prune(model, "latency=0.3", importance="l1", example_input=x)
    before, after = model.prune_report.latency
    assert 0 < after <= 0.7 * before
    assert "timed alone here" in zoo.pruning.format_report(model.prune_report)
    assert model(x).shape == (2, 3, 24, 24)


def test_time_layer_times_a_conv_in_the_layout_the_model_hands_it(monkeypatch):
    """RCAN's CPU inference runs channels-last, where oneDNN's conv times follow the width differently: the
    planner's timings must use that layout, and NCHW for a model that runs NCHW."""
    from zoo.pruning import latency

    layouts, stock = [], torch.nn.functional.conv2d
    monkeypatch.setattr(torch.nn.functional, "conv2d", lambda x, *a: layouts.append(
        "nhwc" if not x.is_contiguous() else "nchw") or stock(x, *a))
    layer, x = nn.Conv2d(8, 16, 3, padding=1), torch.rand(2, 8, 6, 6)
    latency.time_layer(layer, x, 4, 6, repeats=1)
    latency.time_layer(layer, x.contiguous(memory_format=torch.channels_last), 4, 6, repeats=1)
    assert layouts == ["nchw"] * 2 + ["nhwc"] * 2  # a warm-up run and one timed run each
    model = zoo.create("rcan", n_resgroups=1, n_resblocks=1, n_feats=16, reduction=4).eval()
    timed = latency.LatencyModel(model, model.pruning_groups(), torch.rand(1, 3, 8, 8))
    trunk = [x for name, x in timed.inputs.items() if timed.layers[name].kernel_size == (3, 3) and name != "head.0"]
    assert trunk and all(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() for x in trunk)


def _timed_layers(model, plan, x, timer):
    """The timer over a pruned copy's own layers at their own widths: what the plan's estimate must equal."""
    from zoo.pruning import apply_plan

    pruned = apply_plan(copy.deepcopy(model), plan).eval()
    inputs = {}

    def record(name):
        def hook(module, args, output):
            inputs.setdefault(name, args[0])  # returns None: the output stays
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in pruned.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        pruned(x)
    for hook in hooks:
        hook.remove()
    for name, layer in pruned.named_modules():
        if name in inputs:
            cin = layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features
            cout = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
            yield timer(layer, inputs[name], cin, cout)


def test_round_to_keeps_whole_multiples_and_still_meets_the_target():
    model, x = _make("seresnet18")
    zoo.prune(model, "flops=0.5", importance="l1", round_to=8)
    kept = {name: after for name, (before, after) in model.prune_report.widths.items() if after != before}
    assert kept and all(after % 8 == 0 for after in kept.values()), kept
    assert 1 - model.prune_report.macs[1] / model.prune_report.macs[0] >= 0.5
    with pytest.raises(ValueError, match="round_to must be a whole number of channels >= 1"):
        zoo.prune(model, "flops=0.1", importance="l1", round_to=0)


@pytest.mark.parametrize("arch", ["fcanet34", "rcan"])
def test_pruning_zero_is_the_identity(arch):
    model, x = _make(arch)
    before = model(x)
    zoo.prune(model, "flops=0", importance="l1")
    assert model.prune_record == {}
    torch.testing.assert_close(model(x), before, atol=1e-6, rtol=0)


def test_gate_ranking_removes_the_channels_the_gates_close():
    model, x = _make("rcan")
    # close the CA gates on trunk channels 0..3 by pushing their excitation bias very negative
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("body.3"):
                module.conv_du[2].bias[:4] = -30.0
    trunk_width = model.head[0].out_channels
    head = model.head[0].weight.detach().clone()
    zoo.prune(model, {"trunk": 0.25}, importance="gate", calib=[x])
    assert model.head[0].out_channels == trunk_width - 4
    torch.testing.assert_close(model.head[0].weight, head[4:])  # channels 0..3 went, the rest kept in order


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_cutting_rcan_channels_equals_zeroing_them_through_the_pixel_shuffle(scale, tmp_path):
    """RCAN has no BatchNorm, so a channel whose weights and biases are zeroed (soft masking's end point) is a
    channel removed: the pruned model's output equals the masked full model's. A PixelShuffle stage's channel
    is r^2 rows of the conv before it (x4: two stages, x3: r^2 = 9); one misplaced row breaks the equality."""
    from zoo.pruning import apply_plan, plan_pruning, soft_mask

    model = zoo.create("rcan", scale=scale, n_resgroups=1, n_resblocks=2, n_feats=8, reduction=4).eval()
    x = torch.rand(1, 3, 6, 7)
    stages = [g.name for g in model.pruning_groups() if g.name.startswith("upsampler.")]
    assert stages == [f"upsampler.{i}" for i in range(2 if scale == 4 else 1)]
    plan = plan_pruning(model, {name: 0.5 for name in stages} | {"trunk": 0.25}, importance="l1")
    masked = copy.deepcopy(model)
    soft_mask(masked, plan, 0.0)
    apply_plan(model, plan)
    ratio = 3 if scale == 3 else 2  # x4 is two x2 stages
    assert model.tail[0][0].out_channels == 4 * ratio * ratio  # 8 -> 4 channels of r^2 rows each
    assert model.tail[1].in_channels == 4 and model.num_features == 6
    out = model(x)
    assert out.shape == (1, 3, 6 * scale, 7 * scale)
    torch.testing.assert_close(out, masked(x), atol=1e-5, rtol=0)
    zoo.save_pretrained(model, tmp_path)
    torch.testing.assert_close(zoo.create("rcan", pretrained=str(tmp_path)).eval()(x), out, atol=1e-6, rtol=0)


def test_cutting_a_key_value_head_removes_its_query_heads_and_equals_zeroing_them():
    """Grouped-query attention (4 query heads on 2 key-value heads): one channel of a layer's head group is a
    key-value head with the two query heads that read it. Zeroed q/k/v rows and o_proj columns add nothing to
    the residual stream, so the cut model's logits equal the masked model's; the other layer keeps its heads
    and the KV cache sizes itself per layer."""
    from zoo.pruning import apply_plan, plan_pruning, soft_mask

    torch.manual_seed(0)
    model = zoo.create("moc_lm", vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64).eval()
    ids = torch.randint(0, 50, (2, 8))
    plan = plan_pruning(model, {"layers.0.heads": 0.5, "layers.1.ffn": 0.5}, importance="l1")
    masked = copy.deepcopy(model)
    soft_mask(masked, plan, 0.0)
    apply_plan(model, plan)
    attn = model.layers[0].attn
    assert (attn.n_heads, attn.n_kv_heads, attn.q_proj.out_features, attn.k_proj.out_features) == (2, 1, 16, 8)
    assert (model.layers[1].attn.n_heads, model.layers[1].ffn.hidden_dim) == (4, 32)
    torch.testing.assert_close(model(ids), masked(ids), atol=1e-5, rtol=0)
    cached = model.generate(ids, 4, temperature=0, cache="dense")
    torch.testing.assert_close(cached, model.generate(ids, 4, temperature=0, cache=None), atol=0, rtol=0)


def test_reconstruction_refits_the_reading_layer_onto_the_kept_channels():
    """An RCAB's middle channel 5 planted as 0.01 x channel 4 (ReLU keeps the ratio) and read through large
    weights: cutting it alone changes the output; with reconstruct=True the conv that reads it folds its
    contribution into channel 4's weights (least squares on the calibration batch) and the output stays."""
    def planted():
        model, x = _make("rcan")
        block = model.body[0].body[0].body  # conv, ReLU, conv, CA
        with torch.no_grad():
            block[0].weight[5], block[0].bias[5] = 0.01 * block[0].weight[4], 0.01 * block[0].bias[4]
            block[2].weight[:, 5] *= 100
        return model, x

    model, x = planted()
    expected = model(x)
    target = {"body.0.body.0.mid": 1 / 16}  # the lowest l1 of 16: channel 5
    cut = zoo.prune(planted()[0], target, importance="l1")
    rebuilt = zoo.prune(model, target, importance="l1", calib=[x], reconstruct=True)
    assert rebuilt.body[0].body[0].body[0].out_channels == 15
    plain_error = (cut(x) - expected).abs().max()
    assert plain_error > 1e-3 and (rebuilt(x) - expected).abs().max() < 1e-3 * plain_error
    with pytest.raises(ValueError, match="reconstruct=True refits the layers after the cut on calibration batches"):
        zoo.prune(planted()[0], target, importance="l1", reconstruct=True)


def test_fcanet_keeps_each_surviving_channel_on_its_dct_frequency():
    model, x = _make("fcanet34")
    gate = model.layer1[0].att
    buffer, squeeze = gate.dct_layer.weight.clone(), gate.fc[0].weight.detach().clone()  # (C, h, w), (C/r, C)
    zoo.prune(model, {"stem": 0.5}, importance="l1")  # a basic-block stage 1 has no projection: the stem's stream
    # the kept channels, found by their (random, so unique) columns of the squeeze layer
    kept = [int((squeeze.T == column).all(1).nonzero()[0]) for column in gate.fc[0].weight.detach().T]
    assert len(kept) == buffer.shape[0] // 2 == gate.channels and kept == sorted(kept)
    torch.testing.assert_close(gate.dct_layer.weight, buffer[kept], atol=0, rtol=0)
    assert gate.dct_layer.groups == gate.channels  # uneven frequency runs: pooled channel by channel
    assert model(x).shape == (2, 5)


@pytest.mark.parametrize("arch", ["fcanet34", "han", "channelvit", "moc_lm"])
def test_a_pruned_model_round_trips_through_save_pretrained_and_quantizes(tmp_path, arch):
    model, x = _make(arch)
    zoo.prune(model, "params=0.3", importance="taylor", calib=[x])
    expected = model(x)
    zoo.save_pretrained(model, tmp_path / "float")
    loaded = zoo.create(arch, pretrained=str(tmp_path / "float")).eval()
    assert loaded.prune_record == model.prune_record
    torch.testing.assert_close(loaded(x), expected, atol=1e-6, rtol=0)
    quantized = zoo.quantize(model, "w8a8")
    out = quantized(x)
    assert (out - expected).abs().max() < 0.1 * expected.abs().max()
    zoo.save_pretrained(quantized, tmp_path / "w8a8")
    torch.testing.assert_close(zoo.create(arch, pretrained=str(tmp_path / "w8a8")).eval()(x), out, atol=1e-6, rtol=0)


def test_a_model_pruned_elsewhere_saves_through_the_widths_its_groups_read(tmp_path):
    """What Torch-Pruning's output needs (benchmarks/pruning.py): no record, only the shrunk layers."""
    from zoo.pruning import record_widths

    model, x = _make("rcan")
    zoo.prune(model, "flops=0.3", importance="l1")
    del model.prune_record
    model.prune_record = record_widths(model)
    assert model.prune_record["head.0"] == {"out": model.head[0].out_channels} and model.head[0].out_channels < 16
    zoo.save_pretrained(model, tmp_path)
    torch.testing.assert_close(zoo.create("rcan", pretrained=str(tmp_path)).eval()(x), model(x), atol=1e-6, rtol=0)


def test_replay_refuses_a_record_of_another_model():
    model, _ = _make("rcan")
    with pytest.raises(ValueError, match="names module 'layer1.0.conv1', which RCAN lacks"):
        apply_record(model, {"layer1.0.conv1": {"out": 3}})
    with pytest.raises(ValueError, match=r"'head.0' out width must be an int in 1..16; got 20"):
        apply_record(model, {"head.0": {"out": 20}})


@pytest.mark.parametrize("target, message", [
    ("flops=1.5", r"target flops must be the fraction to remove, in \[0, 1\)"),
    ("flops=-0.1", r"in \[0, 1\)"),
    ("macs=0.5", "write 'flops=<fraction removed>'"),
    ("latency=1", r"target latency must be the fraction to remove"),
    ("flops=half", "'half' is not a number"),
    ({"layer9": 0.5}, "names group 'layer9', which seresnet18 lacks; did you mean 'layer"),
])
def test_bad_targets_are_one_clear_sentence(target, message):
    model, x = _make("seresnet18")
    with pytest.raises(ValueError, match=message):
        zoo.prune(model, target, importance="l1")


def test_bad_importance_missing_calibration_and_unsupported_layers_are_refused_before_any_work():
    model, x = _make("seresnet18")
    widths = model.layer1[0].conv1.out_channels
    with pytest.raises(KeyError, match="unknown pruning importance 'gates'; did you mean 'gate'"):
        zoo.prune(model, "flops=0.5", importance="gates")
    with pytest.raises(ValueError, match="importance='taylor' runs the model: pass calib="):
        zoo.prune(model, "flops=0.5", importance="taylor")
    with pytest.raises(ValueError, match="out of reach"):
        zoo.prune(model, "flops=0.99", importance="l1", calib=[x])
    assert model.layer1[0].conv1.out_channels == widths
    with pytest.raises(TypeError, match="declares no pruning groups"):
        zoo.prune(nn.Sequential(nn.Conv2d(3, 4, 1)), "flops=0.5", importance="l1")
    with pytest.raises(TypeError, match="pruning cannot shrink GroupNorm"):
        shrink(nn.GroupNorm(2, 4), "channels", torch.arange(2))
    zoo.quantize(model, "w8a8")
    with pytest.raises(ValueError, match="is quantized; prune the float model"):
        zoo.prune(model, "flops=0.5", importance="l1")


def test_sensitivity_rates_keep_a_planted_sensitive_group_wider():
    """rates='sensitivity' weighs each group by the output change its pruning alone causes: scaling the conv
    that reads layer4.0's inner channels by 30 (their l1 scores, read from the conv writing them, are unchanged,
    so the global ranking is too) makes the group keep several times more channels, deterministically, at the
    same target, and the model itself is left as it was."""
    from zoo.pruning import plan_pruning

    model, _ = _make("seresnet18")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))

    def widths(rates):
        plans = [plan_pruning(model, "flops=0.5", "l1", [x], rates=rates) for _ in range(2)]
        assert plans[0].report.widths == plans[1].report.widths  # deterministic
        return {name: after for name, (_, after) in plans[0].report.widths.items()}

    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain, calm = widths("global"), widths("sensitivity")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        model.layer4[0].conv2.weight.mul_(30)
    assert widths("global") == plain
    planted = widths("sensitivity")
    assert planted["layer4.0.inner1"] > 4 * calm["layer4.0.inner1"], (planted, calm)
    pruned = zoo.prune(model, "flops=0.5", "l1", [x], rates="sensitivity")
    assert pruned.layer4[0].conv1.out_channels == planted["layer4.0.inner1"]
    assert 0.5 <= 1 - pruned.prune_report.macs[1] / pruned.prune_report.macs[0] < 0.52
    with pytest.raises(ValueError, match="rates must be one of global, sensitivity, greedy; got 'auto'"):
        zoo.prune(model, "flops=0.5", "l1", [x], rates="auto")
    with pytest.raises(ValueError, match="rates='sensitivity' measures each group's effect on calibration batches"):
        zoo.prune(model, "flops=0.5", "l1", rates="sensitivity")
    with pytest.raises(ValueError, match="this target names them itself: give one or the other"):
        zoo.prune(model, {"layer4": 0.5}, "l1", [x], rates="sensitivity")


def test_greedy_search_takes_the_cheapest_step_per_saved_cost_and_measures_lazily():
    """greedy_removal on formulas: group 0 is ten times as sensitive as group 1, so the budget is met from
    group 1 first; group 2's cost is a staircase (kept widths between multiples of 16 cost the next multiple),
    so its 8-channel step is taken two at a time or not at all; a step is measured only when it leads."""
    from zoo.pruning.search import greedy_removal

    widths, floors, steps = [32, 32, 32], [4, 4, 8], [8, 8, 8]
    weight = [10.0, 1.0, 2.0]
    calls = []

    def cost(removed):
        kept = [w - r for w, r in zip(widths, removed)]
        return kept[0] + kept[1] + -(-kept[2] // 16) * 16  # group 2 runs in blocks of 16

    def measure(removed):
        calls.append(tuple(removed))
        return sum(w * r * r for w, r in zip(weight, removed))  # convex: each further step costs more

    removed = greedy_removal(widths, floors, steps, cost, 0.5 * cost([0, 0, 0]), measure)
    assert removed == greedy_removal(widths, floors, steps, cost, 0.5 * cost([0, 0, 0]), measure)  # deterministic
    assert cost(removed) <= 48 and removed[2] % 16 == 0
    # rise per saved unit: group 1's steps 8, 24, 40 (then its floor); group 2's double step 32; group 0's 80, last
    assert removed == [8, 24, 16], removed
    assert len(set(calls)) < 3 * 5  # fewer distinct measurements than every group's every step
    with pytest.raises(ValueError, match="out of reach: every group cut to its floor still costs"):
        greedy_removal(widths, floors, steps, cost, 0.1 * cost([0, 0, 0]), measure)


def test_greedy_rates_keep_a_planted_sensitive_group_and_meet_a_latency_target(monkeypatch):
    """rates='greedy' on a model: the search meets a FLOPs target, leaves the model's weights as they were,
    and keeps layer4.0's inner channels when the conv reading them is scaled by 30 (the global ranking of
    l1 scores cannot see that); under a latency target it meets the timed budget (a timer returning MACs)."""
    from zoo.pruning import latency, plan_pruning

    model, _ = _make("seresnet18")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calm = plan_pruning(model, "flops=0.5", "l1", [x], rates="greedy")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        model.layer4[0].conv2.weight.mul_(30)
    planted = plan_pruning(model, "flops=0.5", "l1", [x], rates="greedy")
    inner = lambda plan: plan.report.widths["layer4.0.inner1"][1]  # noqa: E731
    assert inner(planted) > inner(calm), (inner(planted), inner(calm))
    pruned = zoo.prune(model, "flops=0.5", "l1", [x], rates="greedy", round_to=8)
    assert all(after % 8 == 0 or after == full for full, after in pruned.prune_report.widths.values())
    assert 1 - pruned.prune_report.macs[1] / pruned.prune_report.macs[0] >= 0.5
    assert pruned(x).shape == (2, model.num_classes)

    monkeypatch.setattr(latency, "time_layer", lambda layer, example, cin, cout: float(cin * cout))
    model, x = _make("rcan")
    plan = plan_pruning(model, "latency=0.4", "l1", [x], rates="greedy", example_input=x)
    full, after = plan.report.latency
    assert after <= 0.6 * full
    with pytest.raises(ValueError, match="rates='greedy' measures each group's effect on calibration batches"):
        plan_pruning(model, "flops=0.5", "l1", rates="greedy")
    with pytest.raises(ValueError, match=r"target flops=0.8 is out of reach: .* \(rates='greedy' cuts whole steps"):
        plan_pruning(model, "flops=0.8", "l1", [x], rates="greedy", min_keep=0.5)


def test_target_parsing():
    assert PruneTarget.parse("params=0.3") == PruneTarget("params", 0.3)
    assert PruneTarget.parse(0.5) == PruneTarget("flops", 0.5)
    assert PruneTarget.parse({"trunk": 0.25}).rates == {"trunk": 0.25}


def _digits_config(tmp_path, prune: dict):
    import yaml
    from run_helpers import ROOT, tiny_config

    cfg = tiny_config(ROOT / "configs" / "digits_seresnet.yaml", tmp_path / "run")
    config = yaml.safe_load(cfg.read_text())
    config["prune"] = prune
    cfg.write_text(yaml.safe_dump(config))
    return cfg


def test_soft_masking_in_train_py_fades_then_cuts_and_exports_the_pruned_model(tmp_path):
    import json
    from zoo.training import run

    cfg = _digits_config(tmp_path, {"target": "flops=0.5", "mode": "soft", "calib_batches": 1, "end_step": 1})
    cli = run(["--config", str(cfg)])  # 2 steps: the mask is 0 from step 1, the cut at the end
    net = cli.model.model
    before, after = net.prune_report.macs
    assert 0.5 <= 1 - after / before < 0.56
    assert cli.model.ema.module.layer1[0].conv1.out_channels == net.layer1[0].conv1.out_channels < 64
    export = tmp_path / "run" / "export"
    assert json.loads((export / "config.json").read_text())["pruned"] == net.prune_record
    loaded = zoo.create("seresnet18", pretrained=str(export)).eval()
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(loaded(x), net.eval()(x), atol=1e-5, rtol=0)
    assert "test/top1" in cli.results  # the best checkpoint (full width, written before the cut) was cut to load


def test_oneshot_mode_prunes_and_refits_before_the_first_step_and_trains_the_smaller_model(tmp_path):
    import json
    from zoo.training import run

    cfg = _digits_config(tmp_path, {"target": "flops=0.5", "mode": "oneshot", "calib_batches": 1, "reconstruct": True})
    cli = run(["--config", str(cfg)])
    net = cli.model.model
    assert 0.5 <= 1 - net.prune_report.macs[1] / net.prune_report.macs[0] < 0.56
    assert cli.model.ema.module.layer1[0].conv1.out_channels == net.layer1[0].conv1.out_channels < 64
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["state_dict"]["model.layer1.0.conv1.weight"].shape[0] < 64  # trained at the pruned width throughout
    assert json.loads((tmp_path / "run" / "export" / "config.json").read_text())["pruned"] == net.prune_record


def test_a_later_test_of_a_soft_pruned_run_evaluates_the_pruned_model(tmp_path):
    from zoo.training import run

    cfg = _digits_config(tmp_path, {"target": "flops=0.5", "mode": "soft", "calib_batches": 1, "end_step": 1,
                                    "rates": "sensitivity"})  # the per-group rates from the loss on one batch
    fit = run(["--config", str(cfg)])
    assert 0.5 <= 1 - fit.model.model.prune_report.macs[1] / fit.model.model.prune_report.macs[0] < 0.56
    widths = fit.model.model.prune_record
    best = torch.load(fit.parts.checkpoint.best_model_path, map_location="cpu", weights_only=True)
    assert "prune_keep" in best and "prune_record" not in best  # written at full width, before the cut
    assert best["state_dict"]["model.layer1.0.conv1.weight"].shape[0] == 64
    test = run(["test", "--config", str(cfg)])  # a fresh task built at full width, the run's best checkpoint
    net = test.model.model
    assert net.prune_record == widths
    assert net.layer1[0].conv1.out_channels == fit.model.model.layer1[0].conv1.out_channels < 64
    assert test.model.ema.module.layer1[0].conv1.out_channels == net.layer1[0].conv1.out_channels
    assert test.results["test/top1"] == pytest.approx(fit.results["test/top1"], abs=1e-6)


def test_a_resumed_soft_pruning_fit_fades_the_same_channels_and_ends_as_a_straight_run(tmp_path, monkeypatch):
    """Soft masking over 4 steps straight == 2 steps, stop, resume to 4: the plan is the callback's checkpointed
    state, so the resumed fit never chooses again (choosing is made to fail) and cuts to the same weights."""
    import yaml

    from zoo.tasks import soft_pruning
    from zoo.training import run

    prune = {"target": "flops=0.5", "mode": "soft", "calib_batches": 1, "end_step": 3, "importance": "gate"}
    trainer = {"max_steps": -1, "limit_train_batches": 3}

    def config(folder, epochs):
        path = _digits_config(tmp_path / folder, prune)
        cfg = yaml.safe_load(path.read_text())
        cfg["trainer"].update(trainer, max_epochs=epochs)
        path.write_text(yaml.safe_dump(cfg))
        return path

    straight = run(["fit", "--config", str(config("straight", 2))]).model
    first = config("resumed", 1)
    run(["fit", "--config", str(first)])

    def choose_again(*args, **kwargs):
        raise AssertionError("a resumed soft-pruning fit chose its channels again")

    monkeypatch.setattr(soft_pruning, "plan_pruning", choose_again)
    resumed = run(["fit", "--config", str(first), "--trainer.max_epochs", "2", "--ckpt_path", "last"]).model
    assert resumed.model.prune_record == straight.model.prune_record
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


def test_kept_indices_in_a_checkpoint_cut_it_for_evaluation_but_not_for_a_resumed_fit():
    """cut_checkpoint on a full-width checkpoint carrying prune_keep: evaluating it (no trainer, or one that is not
    fitting) shrinks the model and slices the state so it loads strictly and equals the plan applied at once;
    a fit resuming from it keeps both at full width."""
    import copy
    from types import SimpleNamespace

    from zoo.pruning import apply_plan, plan_pruning
    from zoo.tasks.soft_pruning import cut_checkpoint, keep_in_checkpoint

    model, x = _make("seresnet18")
    plan = plan_pruning(model, "flops=0.5", "l1")
    expected = apply_plan(copy.deepcopy(model), plan)
    full = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    for fn, cut in (("fit", False), ("test", True), (None, True)):
        net = _make("seresnet18", seed=5)[0]  # other weights: what loads must come from the checkpoint
        trainer = SimpleNamespace(state=SimpleNamespace(fn=fn)) if fn else None
        task = SimpleNamespace(model=net, ema=None, _trainer=trainer, trainer=trainer)
        checkpoint = {"state_dict": dict(full), "prune_keep": keep_in_checkpoint(plan)}
        cut_checkpoint(task, checkpoint)
        state = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items()}
        net.load_state_dict(state)  # strict: the widths agree either way
        assert (net.layer1[0].conv1.out_channels < 64) is cut, fn
        if cut:
            assert net.prune_record == expected.prune_record
            torch.testing.assert_close(net.eval()(x), expected.eval()(x), atol=1e-6, rtol=0)


def test_a_bad_prune_section_stops_before_any_work(tmp_path):
    from zoo.training import run
    from zoo.training.build import ConfigError

    cfg = _digits_config(tmp_path, {"target": "flops=0.5", "mode": "gradual"})
    with pytest.raises(ConfigError, match="prune.mode must be one of soft, oneshot; got 'gradual'"):
        run(["--config", str(cfg)])
    cfg = _digits_config(tmp_path, {"target": "flops=0.5", "rates": "auto"})
    with pytest.raises(ConfigError, match="prune.rates must be one of global, sensitivity, greedy; got 'auto'"):
        run(["--config", str(cfg)])
    cfg = _digits_config(tmp_path, {"target": "flops=0.5", "mode": "soft", "reconstruct": True})
    with pytest.raises(ConfigError, match="prune.reconstruct refits the layers right after a one-shot cut"):
        run(["--config", str(cfg)])
    cfg = _digits_config(tmp_path, {"target": "flops=2"})
    with pytest.raises(ConfigError, match=r"prune: target flops must be the fraction to remove, in \[0, 1\)"):
        run(["--config", str(cfg)])
    assert not (tmp_path / "run" / "checkpoints").exists()
