"""``zoo.quant.analyze`` (per-channel report) and ``zoo.quantize(model, "auto", budget=...)`` (mixed precision):
planted outlier channels found by index, budgets kept, the plan in the summary and the file, the HTML page,
the errors users meet, and the report on the MoC LM and ChannelViT."""
from __future__ import annotations

import base64
import copy
import json
import math

import pytest
import torch
from torch import nn

import zoo
from zoo.quant import QuantPlan, analyze, quantize, summary
from zoo.quant.analyze import model_bytes
from zoo.quant.auto import Budget, plan_from_report
from zoo.quant.io import load_quantized_into, read_quant_metadata

PLANTED = (11, 3)  # conv2's input channels made outliers, largest first


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: per-op overhead dominates, and two threads on a shared 2-core machine ran the
    method searches 20x slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.act = nn.ReLU()
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.act(self.stem(x))
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.head(x.mean((2, 3)))


def _planted() -> tuple[nn.Module, list[torch.Tensor]]:
    """conv1 emits channels 11 and 3 at 60x and 25x the others' scale; conv2 reads them with weights
    shrunk by the same factors, so the float function is an ordinary one and only quantization suffers."""
    torch.manual_seed(0)
    net = _Net().eval()
    with torch.no_grad():
        for channel, factor in zip(PLANTED, (60.0, 25.0)):
            net.conv1.weight[channel] *= factor
            net.conv1.bias[channel] = abs(float(net.conv1.bias[channel])) * factor + factor
            net.conv2.weight[:, channel] /= factor
    return net, [torch.randn(4, 3, 12, 12) for _ in range(2)]


@pytest.fixture(scope="module")
def planted_report():
    net, calib = _planted()
    return net, calib, analyze(net, calib, "w4a8", methods=("rtn", "smoothquant"), every_precision=True)


def test_analyze_finds_the_planted_outlier_channels(planted_report):
    net, _, report = planted_report
    conv2 = report.layer("conv2")
    assert conv2.outliers == list(PLANTED)
    assert conv2.outlier_range_share > 0.9  # the other channels use under a tenth of the int8 range
    assert report.layer("conv1").outliers == [] and report.layer("stem").outliers == []
    assert conv2.act_absmax.shape == conv2.act_p99.shape == conv2.act_kurtosis.shape == (16,)
    assert float(conv2.act_p999[11]) > 20 * float(conv2.act_p999[0])
    assert conv2.weight_absmax.shape == (32,) and conv2.weight_group_absmax.shape == (32, 1)  # 16 inputs: per channel
    # the outliers cost RTN the layer's accuracy; SmoothQuant moves them into the weights
    w4 = conv2.headline
    assert w4.layer_sqnr["smoothquant"] > w4.layer_sqnr["rtn"] + 6, w4.layer_sqnr
    assert w4.method == "smoothquant" and w4.precision == "w4-pc"
    text = str(report)
    assert "conv2" in text and "2 (11,3)" in text
    data = json.loads(report.to_json())
    assert data["ranking"] == report.ranking() and data["layers"][2]["outliers"] == list(PLANTED)


def test_rtn_ranking_puts_the_planted_layer_first():
    net, calib = _planted()
    report = analyze(net, calib, "w4a8", methods=("rtn",))
    assert report.ranking()[0] == "conv2", str(report)
    one = report.layer("conv2").headline
    assert one.score < min(report.layer(n).headline.score for n in ("stem", "conv1", "head"))


def test_the_round_to_nearest_ranking_reads_each_layers_rtn_score_and_says_when_it_is_missing(planted_report):
    """ranking("rtn") ranks by the spec's precision under plain RTN (conv2's planted outliers: first, though
    SmoothQuant repairs it), the summary and the JSON carry it; without every_precision a layer whose best
    method is not RTN has no RTN score, and asking for the ranking says how to get one."""
    net, calib, report = planted_report
    conv2 = report.layer("conv2")
    assert conv2.headline.method == "smoothquant" and conv2.rtn_option.method == "rtn"
    assert conv2.rtn_option.score < conv2.headline.score and conv2.rtn_sensitivity > conv2.sensitivity
    costs = {la.name: la.rtn_sensitivity for la in report.layers}
    assert report.ranking("rtn") == sorted(costs, key=lambda n: -costs[n]) and report.ranking("rtn")[0] == "conv2"
    assert "e2e rtn" in str(report) and json.loads(report.to_json())["ranking_rtn"] == report.ranking("rtn")
    plain = analyze(net, calib, "w4a8", methods=("rtn", "smoothquant"))
    assert plain.layer("conv2").rtn_sensitivity is None and "e2e rtn" not in str(plain)
    with pytest.raises(ValueError, match=r"ranking\(by='rtn'\) needs each layer's round-to-nearest score, which conv2"):
        plain.ranking("rtn")
    with pytest.raises(ValueError, match="rank by 'best'"):
        plain.ranking("worst")


@pytest.mark.parametrize("budget", [0.2, 0.3, "6.5bits", "9000B"])
def test_auto_never_exceeds_the_budget(planted_report, budget):
    net, calib, report = planted_report
    plan = plan_from_report(report, budget)
    q = quantize(copy.deepcopy(net), plan, calib=calib)
    limit = {"fraction": lambda v: v * report.fp32_bytes, "bytes": lambda v: v,
             "bits": lambda v: None}[Budget.parse(budget).kind](Budget.parse(budget).value)
    assert plan.bytes >= model_bytes(q)  # the plan's estimate bounds the real tensors
    if limit is not None:
        assert model_bytes(q) <= limit
    else:
        weights = sum(math.prod(la.weight_shape) for la in report.layers)
        layer_bytes = sum(t.numel() * t.element_size() for n, m in q.named_modules() if n in plan.layers
                          for t in m.state_dict().values())
        assert layer_bytes * 8 / weights <= 6.5


def test_auto_gives_the_planted_layer_more_bits():
    net, calib = _planted()
    rtn = analyze(net, calib, "w4a8", methods=("rtn",), every_precision=True)
    plan = plan_from_report(rtn, 0.2)
    order = ["w4-pc", "w4-g64", "w8", "float"]
    conv2 = order.index(plan.layers["conv2"].precision)
    assert conv2 >= 2, plan.layers
    assert conv2 > min(order.index(plan.layers[n].precision) for n in ("stem", "conv1", "head"))
    # deterministic: the same report plans the same, and more budget never lowers the prediction
    assert plan_from_report(rtn, 0.2) == plan
    assert plan_from_report(rtn, 0.3).predicted >= plan.predicted
    # an accuracy floor: the smallest plan predicted to reach it
    floor = plan_from_report(rtn, ">=35")
    assert floor.predicted >= 35 and floor.bytes <= plan_from_report(rtn, 0.99).bytes


def test_auto_plan_in_summary_and_file_round_trip(tmp_path):
    net, calib = _planted()
    q = quantize(copy.deepcopy(net), "auto", calib=calib, budget=0.25, methods=("rtn", "awq"))
    plan = q.quant_plan
    assert isinstance(plan, QuantPlan) and set(plan.layers) == {"stem", "conv1", "conv2", "head"}
    text = summary(q)
    assert "(auto)" in text and "plan under 25.0% of fp32" in text
    for name, choice in plan.layers.items():
        line = next(line for line in text.splitlines() if line.strip().startswith(name + " "))
        assert ("float (plan)" in line) if choice.precision == "float" else (choice.method in line)
    assert model_bytes(q) <= 0.25 * model_bytes(net)
    path = zoo.save_quantized(q, tmp_path / "auto.safetensors")
    meta = read_quant_metadata(path)
    assert meta["method"] == "auto" and meta["plan"]["layers"]["conv2"] == list(
        (plan.layers["conv2"].precision, plan.layers["conv2"].method))
    again = load_quantized_into(_Net().eval(), meta)
    assert again.quant_plan == plan and summary(again).splitlines()[1] == text.splitlines()[1]
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(again(x), q(x), rtol=0, atol=0)


def test_auto_round_trips_through_zoo_create(tmp_path):
    model = zoo.create("rcan_tiny_x2", pretrained=True).eval()
    calib = [torch.rand(2, 3, 12, 12)]
    q = quantize(model, "auto", calib=calib, budget=0.3, methods=("rtn",))
    path = zoo.save_quantized(q, tmp_path / "rcan_auto.safetensors")
    again = zoo.create("rcan_tiny_x2", pretrained=str(path))
    assert again.quant_plan == q.quant_plan and again.quant_method == "auto"
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(again(x), q(x), rtol=0, atol=1e-6)


def test_plans_under_8_bit_specs_and_from_a_one_pass_iterator():
    net, calib = _planted()
    base = zoo.QuantSpec.parse("w8a8").with_(group_size=16, group_fallback=True)  # the stem's 3 inputs: per channel
    q = quantize(copy.deepcopy(net), "auto", calib=iter(calib), budget=0.5, base=base, methods=("rtn",))
    plan = q.quant_plan.layers
    assert plan["stem"].precision in ("w8", "float") and {c.precision for c in plan.values()} <= {"w8-g16", "w8", "float"}
    assert [getattr(q, n).group_size for n in plan if plan[n].precision == "w8-g16"] == \
        [16] * sum(c.precision == "w8-g16" for c in plan.values())
    assert model_bytes(q) <= 0.5 * model_bytes(net)


def test_bad_input_is_one_clear_error(planted_report):
    net, calib, report = planted_report
    with pytest.raises(ValueError, match="below the smallest reachable size"):
        plan_from_report(report, 0.01)
    with pytest.raises(ValueError, match="below the smallest reachable size"):
        quantize(copy.deepcopy(net), "auto", calib=calib, budget=100, report=report)
    with pytest.raises(ValueError, match="calibration data is empty"):
        analyze(copy.deepcopy(net), [], "w4a8")
    with pytest.raises(ValueError, match="calibration data is empty"):
        quantize(copy.deepcopy(net), "auto", calib=[], budget=0.3)
    with pytest.raises(KeyError, match="unknown metric 'sqrn'; did you mean 'sqnr'"):
        analyze(copy.deepcopy(net), calib, metric="sqrn")
    with pytest.raises(TypeError, match="mertic"):
        quantize(copy.deepcopy(net), "auto", calib=calib, budget=0.3, mertic="sqnr")
    with pytest.raises(ValueError, match="needs budget="):
        quantize(copy.deepcopy(net), "auto", calib=calib)
    with pytest.raises(TypeError, match="only a planned spec takes; pass spec='auto'"):
        quantize(copy.deepcopy(net), "w4a8", budget=0.2)
    with pytest.raises(ValueError, match="not a budget"):
        Budget.parse("lots")
    with pytest.raises(ValueError, match="fraction of the float model's size"):
        Budget.parse(4.5)
    with pytest.raises(ValueError, match="scored only the spec's precision"):
        plan_from_report(analyze(copy.deepcopy(net), calib, methods=("rtn",)), 0.3)
    with pytest.raises(KeyError, match="unknown method 'awk'"):
        analyze(copy.deepcopy(net), calib, methods=("awk",))
    with pytest.raises(ValueError, match="score_elements=0 is not a positive number of input elements; pass an int"):
        analyze(copy.deepcopy(net), calib, methods=("rtn",), score_elements=0)


def test_end_to_end_scores_run_on_the_first_images():
    """The output-SQNR score runs on the first images up to ``score_elements`` input elements; the statistics on
    all of them. The planted net's images are 3x12x12 = 432 elements: the default takes all 8, 864 takes 2."""
    from zoo.quant.analyze import _group, _OneLayer, _sqnr
    from zoo.quant.methods import SimulatedLayer, Transform
    net, calib = _planted()
    default = analyze(net, calib, "w4a8", methods=("rtn",))
    every = analyze(net, calib, "w4a8", methods=("rtn",), score_elements=None)
    two = analyze(net, calib, "w4a8", methods=("rtn",), score_elements=864)
    first = calib[0][:2]
    with torch.no_grad():
        reference = net(first)
        with _OneLayer(net.conv2, SimulatedLayer(net.conv2, two.spec, _group(two.spec, net.conv2), Transform())):
            expected = _sqnr([reference], [net(first)])
    assert two.layer("conv2").headline.score == pytest.approx(expected, abs=1e-6)
    assert two.layer("conv2").headline.score != pytest.approx(every.layer("conv2").headline.score, abs=1e-3)
    for name in ("stem", "conv1", "conv2", "head"):
        assert torch.equal(two.layer(name).act_absmax, every.layer(name).act_absmax)
        assert default.layer(name).headline.score == every.layer(name).headline.score


def test_verify_pass_keeps_a_method_swap_that_the_whole_quantized_model_confirms():
    """verify_plan quantizes every planned layer at once and keeps a method swap on the costliest layers only
    when the calibration SQNR rises; its measurement is the real quantized model's, and the bytes stay in budget."""
    from zoo.quant.auto import verify_plan
    net, calib = _planted()
    methods = ("rtn", "smoothquant", "awq", "os+")  # the figures below are of these four (GPTQ's rounding wins here)
    report = analyze(net, calib, "w4a8", methods=methods, every_precision=True)
    plan = plan_from_report(report, 0.3)
    verified = verify_plan(net, calib, plan, report, 0.3, layers=3, methods=methods)
    assert plan.layers["conv2"] == zoo.quant.plan.LayerChoice("w8", "os+")
    assert verified.layers["conv2"] == zoo.quant.plan.LayerChoice("w8", "smoothquant")
    notes = verified.notes["verified"]
    assert notes["swaps"] == ["conv2: os+->smoothquant"]
    assert notes["measured_before"] == pytest.approx(55.826, abs=1e-3)
    assert notes["measured_after"] == pytest.approx(57.364, abs=1e-3)
    assert verified.bytes == plan.bytes <= 0.3 * model_bytes(net)
    x = torch.cat(calib)
    with torch.no_grad():
        reference = net(x)
        for p, measured in ((plan, notes["measured_before"]), (verified, notes["measured_after"])):
            out = quantize(copy.deepcopy(net), p, calib=calib)(x)
            sqnr = 10 * math.log10(float(reference.pow(2).sum() / (out - reference).pow(2).sum()))
            assert sqnr == pytest.approx(measured, abs=1e-3)
    via_quantize = quantize(copy.deepcopy(net), "auto", calib=calib, budget=0.3, report=report, verify=3,
                            methods=methods)
    assert via_quantize.quant_plan.layers == verified.layers
    with pytest.raises(ValueError, match="verify=-1 is not a number of layers; pass an int >= 0"):
        quantize(copy.deepcopy(net), "auto", calib=calib, budget=0.3, report=report, verify=-1)

def test_user_metric_scores_layers():
    net, calib = _planted()
    x = torch.randn(8, 3, 12, 12)
    with torch.no_grad():
        labels = net(x).argmax(1)

    def agreement(model):
        with torch.no_grad():
            return float((model(x).argmax(1) == labels).float().mean())

    before = {k: v.clone() for k, v in net.state_dict().items()}
    report = analyze(net, calib, methods=("rtn", "awq"), metric=agreement)
    assert report.metric == "agreement" and report.float_score == 1.0
    # the float model is left as it was: same tensors, no hook left behind
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    assert all(0 <= la.headline.score <= 1 and la.sensitivity == 1 - la.headline.score for la in report.layers)


def test_html_page_renders_with_its_plots(planted_report, tmp_path):
    from html.parser import HTMLParser

    _, _, report = planted_report

    class Images(HTMLParser):
        def __init__(self):
            super().__init__()
            self.sources, self.cells = [], 0

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.sources.append(dict(attrs)["src"])
            self.cells += tag == "td"

    path = report.to_html(tmp_path / "report.html", worst=2)
    parser = Images()
    parser.feed(path.read_text())
    assert len(parser.sources) == 3  # the overview and the two worst layers' channel plots
    for src in parser.sources:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        png = base64.b64decode(src[len(prefix):], validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert parser.cells == len(report.layers) * 12  # a row per layer: 7 cells, 2 methods, best, end to end, choices
    assert "conv2" in path.read_text() and "11, 3" in path.read_text()
    png = report.plot(tmp_path / "overview.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_report_and_auto(tmp_path, capsys):
    from zoo.__main__ import main

    from zoo.data.images import write_image

    images = tmp_path / "images"
    images.mkdir()
    torch.manual_seed(0)
    for i in range(4):  # a folder of small images: 4 centre crops of 8x8 make one calibration batch
        write_image(torch.rand(3, 10, 10), images / f"{i}.png")
    small = zoo.create("rcan", n_resgroups=1, n_resblocks=2, n_feats=16, reduction=4)  # 13 layers
    zoo.save_pretrained(small, tmp_path / "small")
    out, page = tmp_path / "rcan_auto", tmp_path / "report.json"  # a folder: its config.json holds the small size
    assert main(["quantize", "rcan", str(out), "--weights", str(tmp_path / "small"), "--spec", "w4a8", "--auto",
                 "--budget", "0.3", "--calib", str(images), "--calib-batches", "1", "--calib-size", "8",
                 "--report", str(page), "--verify", "2"]) == 0
    text = capsys.readouterr().out
    assert "quantization report: w4a8" in text and "plan under 30.0% of fp32" in text
    data = json.loads(page.read_text())
    again = zoo.create("rcan", pretrained=str(out))
    assert again.quant_method == "auto" and set(again.quant_plan.layers) == {la["name"] for la in data["layers"]}
    assert len(data["layers"]) == 13 and model_bytes(again) <= 0.3 * model_bytes(small)
    assert len(again.quant_plan.notes["verified"]["layers"]) == 2  # --verify 2: the two costliest layers were retried
    assert main(["quantize", "rcan", str(out), "--verify", "2", "--calib", str(images)]) == 2
    assert "--verify 2 checks the layers of an --auto plan" in capsys.readouterr().err
    assert main(["quantize", "rcan", str(out), "--auto", "--calib", str(images)]) == 2
    assert "--auto needs --budget" in capsys.readouterr().err
    assert main(["quantize", "rcan", str(out), "--auto", "--budget", "lots", "--calib", str(images)]) == 2
    assert "is not a budget" in capsys.readouterr().err


def test_report_on_the_moc_language_model():
    """Per-channel outliers of the LM's projections: a RMSNorm channel planted 40x larger shows up at its
    index in every projection that reads that norm (q, k, v), and only there."""
    lm = zoo.create("moc_lm", vocab_size=257, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128,
                    max_seq_len=48).eval()
    with torch.no_grad():
        lm.layers[1].attn_norm.weight[17] *= 40
    calib = [torch.randint(0, 257, (2, 24)) for _ in range(2)]
    report = analyze(lm, calib, "w4a16", methods=("rtn", "awq"))
    for proj in ("q_proj", "k_proj", "v_proj"):
        assert report.layer(f"layers.1.attn.{proj}").outliers == [17]
    assert 17 not in report.layer("layers.0.attn.q_proj").outliers
    assert report.layer("layers.1.attn.q_proj").act_absmax.shape == (64,)
    assert report.layer("layers.1.ffn.down_proj").act_absmax.shape == (128,)
    assert "layers.1.attn.q_proj" in str(report)


def test_report_on_channelvit():
    vit = zoo.create("channelvit", img_size=16, patch_size=8, in_chans=3, embed_dim=48, depth=2, num_heads=3,
                     num_classes=5).eval()
    with torch.no_grad():
        vit.blocks[0].norm2.weight[7] *= 30  # a post-LayerNorm outlier channel, as RepQ-ViT describes
    report = analyze(vit, [torch.randn(4, 3, 16, 16)], "w8a8", methods=("rtn", "repq"))
    assert report.layer("blocks.0.mlp.fc1").outliers == [7]
    assert report.layer("blocks.0.mlp.fc1").headline.layer_sqnr["repq"] > report.layer(
        "blocks.0.mlp.fc1").headline.layer_sqnr["rtn"]
    assert len(report.ranking()) == len(report.layers) >= 8
