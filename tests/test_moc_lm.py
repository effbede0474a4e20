"""The MoC language model: forward contract, KV-cache equivalence, sampling, loading, quantization, CLI."""
from __future__ import annotations

import io

import pytest
import torch

import zoo
from zoo.__main__ import main
from zoo.generation import TextStreamer, sample_next, top_k_filter, top_p_filter
from zoo.models.kv_cache import DenseKVCache, QuantizedKVCache

SMALL = dict(vocab_size=257, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, max_seq_len=48)


def small_lm(top_k: int | None = 32, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return zoo.create("moc_lm", **{**SMALL, "top_k": top_k, **kwargs}).eval()


def test_registered_sizes_and_configs():
    assert {"moc_lm", "moc_lm_tiny", "dense_lm_tiny", "moc_lm_130m", "dense_lm_130m", "moc_lm_350m",
            "dense_lm_350m"} <= set(zoo.list_models("*_lm*"))
    tiny = zoo.create("moc_lm_tiny", device="meta").config
    assert (tiny.dim, tiny.n_layers, tiny.n_heads, tiny.n_kv_heads, tiny.hidden_dim, tiny.top_k, tiny.vocab_size) == \
        (256, 4, 4, 2, 688, 172, 257)
    assert zoo.create("dense_lm_tiny", device="meta").config.top_k is None
    big = zoo.create("moc_lm_350m", device="meta")
    assert (big.config.dim, big.config.n_layers, big.config.hidden_dim, big.config.top_k) == (1024, 24, 2736, 342)
    params = sum(p.numel() for p in zoo.create("dense_lm_130m", device="meta").parameters())
    assert 130e6 < params < 140e6  # GaLore's LLaMA-130M: 134M with an untied 32000-token head
    cfg = zoo.create("moc_lm_tiny", device="meta").pretrained_cfg
    assert cfg["architecture"] == "moc_lm_tiny" and cfg["extra"]["tokenizer"] == "byte"


@pytest.mark.parametrize("top_k", [32, None])
def test_forward_shapes_and_gradients(top_k):
    model = small_lm(top_k).train()
    ids = torch.randint(0, 257, (2, 11))
    logits = model(ids)
    assert logits.shape == (2, 11, 257)
    assert model.forward_features(ids).shape == (2, 11, 64)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.roll(-1, 1).flatten()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad
    # causal: changing the last token leaves every earlier position's logits unchanged
    other = ids.clone()
    other[:, -1] = (other[:, -1] + 1) % 257
    with torch.no_grad():
        assert torch.equal(model(other)[:, :-1], model(ids)[:, :-1])


def test_cached_forward_equals_full_forward():
    """Prefill, a multi-token chunk on top of a cache (explicit mask), then single tokens; GQA with 2 KV heads."""
    model = small_lm()
    ids = torch.randint(0, 257, (2, 20))
    with torch.no_grad():
        full = model(ids)
        cache = model.make_cache("dense")
        parts = [model(ids[:, :7], cache=cache), model(ids[:, 7:12], cache=cache)]
        parts += [model(ids[:, i:i + 1], cache=cache) for i in range(12, 20)]
    assert len(cache) == 20
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("top_k", [32, None])
def test_greedy_generation_with_cache_equals_recomputation(top_k):
    model = small_lm(top_k)
    prompt = torch.randint(0, 257, (2, 5))
    with_cache = model.generate(prompt, 30, temperature=0, cache="dense")
    recomputed = model.generate(prompt, 30, temperature=0, cache=None)
    assert with_cache.shape == (2, 35) and torch.equal(with_cache[:, :5], prompt)
    assert torch.equal(with_cache, recomputed)
    assert len(set(with_cache[0, 5:].tolist())) > 3  # not a constant: the comparison has teeth


def test_logits_to_keep_computes_the_last_positions_only_and_generation_asks_for_one(monkeypatch):
    model = small_lm()
    ids = torch.randint(0, 257, (2, 9))
    with torch.no_grad():
        full = model(ids)
        torch.testing.assert_close(model(ids, logits_to_keep=3), full[:, -3:], atol=1e-6, rtol=1e-6)
        assert model(ids, logits_to_keep=0).shape == full.shape
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="logits_to_keep must be an int >= 0"):
            model(ids, logits_to_keep=bad)
    rows, head = [], model.lm_head.forward
    monkeypatch.setattr(model.lm_head, "forward", lambda x: rows.append(x.shape[1]) or head(x))
    out = model.generate(ids, 3, temperature=0)
    assert rows == [1, 1, 1] and out.shape == (2, 12)  # the prompt's step too: one position, not nine
    monkeypatch.undo()
    assert torch.equal(out, model.generate(ids, 3, temperature=0, cache=None))


def test_kivi_cache_logits_stay_close():
    """Token-by-token logits through 8-, 4- and 2-bit KIVI caches (groups of 8, window 8) against the exact
    ones, on the dense twin (a MoC top-K flip would add a jump unrelated to the cache); error grows as bits fall."""
    model = small_lm(None)
    ids = torch.randint(0, 257, (1, 40))
    with torch.no_grad():
        full = model(ids)
        errors = {}
        for bits in (8, 4, 2):
            cache = QuantizedKVCache(2, bits=bits, key_group_size=8, residual_length=8)
            steps = torch.cat([model(ids[:, i:i + 1], cache=cache) for i in range(40)], dim=1)
            errors[bits] = float((steps - full).norm() / full.norm())
    assert 0 < errors[8] < 3e-3 < errors[4] < 3e-2 < errors[2] < 0.2, errors
    assert model.generate(ids[:, :4], 8, temperature=0, cache="kivi2").shape == (1, 12)


def test_top_k_and_top_p_masks():
    logits = torch.tensor([[1.0, 3.0, 2.0, 5.0]])
    inf = float("-inf")
    assert top_k_filter(logits, 2).tolist() == [[inf, 3.0, inf, 5.0]]
    assert torch.equal(top_k_filter(logits, 4), logits)
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    lp = probs.log()
    kept = lambda p: torch.isfinite(top_p_filter(lp, p)).tolist()  # noqa: E731
    assert kept(0.5) == [[False, True, False, False]]  # 0.5 alone reaches 0.5
    assert kept(0.7) == [[False, True, False, True]]  # 0.5 + 0.3
    assert kept(0.81) == [[True, True, False, True]]  # 0.5 + 0.3 + 0.15 = 0.95
    assert kept(1.0) == [[True, True, True, True]]
    # a draw from the nucleus follows the renormalised probabilities 0.5 / 0.8 and 0.3 / 0.8
    gen = torch.Generator().manual_seed(0)
    draws = sample_next(lp.expand(4000, 4), temperature=1.0, top_p=0.7, generator=gen)
    share = torch.bincount(draws, minlength=4).float() / 4000
    assert share[0] == 0 and share[2] == 0
    assert abs(float(share[1]) - 0.625) < 0.03
    assert torch.equal(sample_next(logits, temperature=0), torch.tensor([3]))
    assert torch.equal(sample_next(logits, temperature=1.0, top_k=1), torch.tensor([3]))


def test_sampling_is_reproducible_and_stops_at_eos():
    model = small_lm()
    prompt = torch.randint(0, 256, (1, 4))
    a = model.generate(prompt, 12, temperature=0.9, top_k=40, top_p=0.95, generator=torch.Generator().manual_seed(3))
    b = model.generate(prompt, 12, temperature=0.9, top_k=40, top_p=0.95, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    streamed = []
    greedy = model.generate(prompt, 12, temperature=0, stream=streamed.append)
    assert torch.equal(torch.stack(streamed, dim=1), greedy[:, 4:])
    eos = int(greedy[0, 6])  # the third greedy token: generation stops right after it
    stopped = model.generate(prompt, 12, temperature=0, eos_id=eos)
    assert stopped.shape[1] < greedy.shape[1] and int(stopped[0, -1]) == eos


def test_bad_input_is_refused_before_work():
    model = small_lm()
    with pytest.raises(ValueError, match="max_seq_len=48"):
        model.generate(torch.zeros(1, 49, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="at most 8 new tokens"):
        model.generate(torch.zeros(1, 40, dtype=torch.long), 9)
    with pytest.raises(ValueError, match="max_seq_len=48"):
        model(torch.zeros(1, 49, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="temperature"):
        model.generate(torch.zeros(1, 4, dtype=torch.long), 2, temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(torch.zeros(1, 4, dtype=torch.long), 2, top_p=0.0)
    with pytest.raises(ValueError, match="cache kind"):
        model.generate(torch.zeros(1, 4, dtype=torch.long), 2, cache="kivi3")
    with pytest.raises(ValueError, match=r"top_k must be in 1\.\.hidden_dim"):
        zoo.create("moc_lm", **{**SMALL, "top_k": 129})
    with pytest.raises(ValueError, match="n_kv_heads"):
        zoo.create("moc_lm", **{**SMALL, "n_kv_heads": 3})


@pytest.mark.parametrize("tie", [False, True])
def test_save_and_load_round_trip(tmp_path, tie):
    model = small_lm(tie_embeddings=tie)
    zoo.save_pretrained(model, tmp_path / "lm")
    assert ("lm_head.weight" in model.state_dict()) != tie
    loaded = zoo.create("moc_lm", pretrained=str(tmp_path / "lm")).eval()
    assert loaded.config == model.config
    ids = torch.randint(0, 257, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    torch.save(model.state_dict(), tmp_path / "lm.pt")
    again = zoo.create("moc_lm", pretrained=str(tmp_path / "lm.pt"), **{**SMALL, "top_k": 32, "tie_embeddings": tie})
    with torch.no_grad():
        assert torch.equal(again.eval()(ids), model(ids))


def test_hugging_face_llama_names_load():
    model = small_lm()
    renames = {".attn.": ".self_attn.", ".ffn.": ".mlp.", ".attn_norm.": ".input_layernorm.",
               ".ffn_norm.": ".post_attention_layernorm."}
    hf = {}
    for key, value in model.state_dict().items():
        for ours, theirs in renames.items():
            key = key.replace(ours, theirs)
        hf[key if key.startswith("lm_head") else f"model.{key}"] = value.clone()
    hf["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    loaded = zoo.create("moc_lm", pretrained=hf, **{**SMALL, "top_k": 32}).eval()
    ids = torch.randint(0, 257, (1, 6))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_w8a8_logits_close_to_float_and_moc_ffn_quantized(tmp_path):
    dense = small_lm(None)
    quant = zoo.create("moc_lm", pretrained=dense.state_dict(), quant="w8a8", **{**SMALL, "top_k": None}).eval()
    ids = torch.randint(0, 257, (2, 16))
    with torch.no_grad():
        ref, out = dense(ids), quant(ids)
    err = float((out - ref).norm() / ref.norm())
    assert 0 < err < 0.05, err
    # 15 Linears; the classifier (lm_head) stays float by the preset's keep, and <first> names the embedding
    assert sum(r.action == "quantized" for r in quant.quant_report) == 14
    moc_float = small_lm(32)
    moc = zoo.create("moc_lm", pretrained=moc_float.state_dict(), quant="w8a8", **{**SMALL, "top_k": 32}).eval()
    actions = {r.name: r.action for r in moc.quant_report}
    assert actions["layers.1.ffn.up_proj"] == actions["layers.1.ffn.down_proj"] == "quantized"
    with torch.no_grad():  # the quantized MoC FFN runs through its modules: same top-K math, integer layers
        ref, out = moc_float(ids), moc(ids)
    err = float((out - ref).norm() / ref.norm())
    assert 0 < err < 0.05, err
    assert moc.generate(ids[:, :4], 6, temperature=0).shape == (2, 10)
    zoo.save_pretrained(moc, tmp_path / "q")
    reloaded = zoo.create("moc_lm", pretrained=str(tmp_path / "q")).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids), moc(ids))
    # decoding one sequence takes the integer decode (K packed rows per token), rebuilt from the file alone
    assert reloaded.layers[1].ffn._integer_decode_ready()
    prompt = ids[:1, :4]
    assert torch.equal(reloaded.generate(prompt, 6, temperature=0), moc.generate(prompt, 6, temperature=0))


def test_text_streamer_holds_back_partial_characters():
    from zoo.data.tokenizers import get_tokenizer

    out = io.StringIO()
    streamer = TextStreamer(get_tokenizer("byte"), out, eos_id=256)
    for byte in "aé€".encode():
        streamer(torch.tensor([byte]))
        assert "\ufffd" not in out.getvalue()
    streamer(torch.tensor([256]))
    assert streamer.finish() == "aé€" and out.getvalue() == "aé€\n"


def test_cli_generate_streams_deterministic_text(tmp_path, capsys):
    model = small_lm()
    zoo.save_pretrained(model, tmp_path / "lm")
    args = ["generate", "--model", "moc_lm", "--weights", str(tmp_path / "lm"), "--prompt", "def ",
            "--max-new-tokens", "12", "--temperature", "0", "--tokenizer", "byte"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args + ["--cache", "kivi4"]) == 0  # 16 tokens: nothing quantized yet, same text
    assert capsys.readouterr().out == first
    ids = model.generate(torch.tensor([list(b"def ")]), 12, temperature=0)
    expected = bytes(i for i in ids[0].tolist() if i < 256).decode("utf-8", errors="replace")
    assert first == expected + "\n"
    assert main(args + ["--quant", "w4a8", "--cache", "kivi4"]) == 0  # integer layers, MoC integer decode
    quantized = zoo.create("moc_lm", pretrained=str(tmp_path / "lm"), quant="w4a8").eval()
    ids = quantized.generate(torch.tensor([list(b"def ")]), 12, temperature=0)
    assert capsys.readouterr().out == bytes(i for i in ids[0].tolist() if i < 256).decode("utf-8", "replace") + "\n"
    assert main(args + ["--quant", "w3a8"]) != 0
    assert "quant='w3a8' is not a quantization spec (did you mean 'w8a8'?)" in capsys.readouterr().err
    seeded = args[:-4] + ["--temperature", "1.0", "--seed", "7", "--top-p", "0.9"]
    assert main(seeded) == 0 and main(seeded) == 0
    one, two = capsys.readouterr().out.splitlines()[:2]
    assert one == two
    assert main(args[:7] + ["--max-new-tokens", "50"]) == 2
    assert "max_seq_len=48" in capsys.readouterr().err


def test_generation_fills_the_given_caches():
    model = small_lm()
    prompt = torch.randint(0, 256, (1, 8))
    dense, kivi = DenseKVCache(2), QuantizedKVCache(2, bits=4, key_group_size=8, residual_length=8)
    greedy = model.generate(prompt, 40, temperature=0, cache=dense)
    model.generate(prompt, 40, temperature=0, cache=kivi)
    assert len(dense) == len(kivi) == 47 and greedy.shape == (1, 48)  # the last token is never fed back
    assert dense.nbytes() == 2 * 2 * 2 * 47 * 16 * 4  # layers x (k, v) x H_kv x T x head_dim x fp32
    # 40 tokens quantized (5 groups of 8), 7 in the window; fp32 scales and zeros (the cache's dtype)
    codes = 2 * 40 * 16 // 2  # per layer, per keys or values: H_kv x T x head_dim at half a byte
    key_stats, value_stats = 2 * 5 * 16 * 4 * 2, 2 * 40 * 2 * 4 * 2  # scale + zero per group
    window = 2 * 2 * 7 * 16 * 4
    assert kivi.nbytes() == 2 * (2 * codes + key_stats + value_stats + window)


@pytest.mark.parametrize("spec", [None, "w8a8", "w8a8-static", "w4a8"])
def test_optimize_stacks_q_k_v_into_one_layer_with_the_same_outputs(spec):
    """zoo.optimize's copy runs each attention's q, k and v as one layer (one GEMM, one activation quantization);
    the prefill and a cached decode step give the unmerged module's values; the model given keeps its layers."""
    import warnings

    torch.manual_seed(0)
    model = zoo.create("moc_lm", vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=96,
                       top_k=24).eval()
    ids = torch.randint(0, 97, (2, 9))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec is not None:
            model = zoo.quantize(model, spec, calib=[ids] if "static" in spec else None)
    keys = list(model.state_dict())
    plain, merged = zoo.optimize(model, compile=False, merge=False), zoo.optimize(model, compile=False)
    attn = merged.layers[0].attn
    assert attn.q_proj is None and type(attn.qkv_proj) is type(model.layers[0].attn.q_proj)
    rows = attn.qkv_proj.weight.shape[0] if spec is None else attn.qkv_proj.out_channels
    assert rows == 64 + 2 * 32  # 4 query heads and 2 key-value heads of 16
    assert model.layers[0].attn.qkv_proj is None and list(model.state_dict()) == keys  # the model is untouched
    outputs = []
    with torch.no_grad():
        for runner in (plain, merged):
            cache = runner.make_cache("dense")
            outputs.append((runner(ids), runner(ids, cache), runner(ids[:, -1:], cache)))
    for got, expected in zip(outputs[1], outputs[0]):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_stack_linears_refuses_layers_that_are_not_one_layer():
    from torch import nn

    from zoo.blocks.quant import stack_linears

    torch.manual_seed(0)
    a, b = nn.Linear(8, 4), nn.Linear(8, 6)
    x = torch.randn(3, 8)
    stacked = stack_linears([a, b])
    torch.testing.assert_close(stacked(x), torch.cat([a(x), b(x)], -1))
    assert stack_linears([a, nn.Linear(8, 6, bias=False)]) is None  # one with a bias, one without
    assert stack_linears([a, nn.Linear(7, 6)]) is None  # other inputs
    assert stack_linears([a, b.double()]) is None
    handle = b.register_forward_hook(lambda *args: None)  # a hook would see nothing
    assert stack_linears([a, b]) is None
    handle.remove()
    calib = [torch.randn(5, 8)]
    qa = zoo.quantize(nn.Sequential(nn.Linear(8, 4)), "w8a8-static-all", calib=calib)[0]
    qb = zoo.quantize(nn.Sequential(nn.Linear(8, 6)), "w8a8-static-all", calib=[2 * calib[0]])[0]
    assert stack_linears([qa, qb]) is None  # two static activation scales
    qb.act_scale.copy_(qa.act_scale)
    merged = stack_linears([qa, qb])
    torch.testing.assert_close(merged(x), torch.cat([qa(x), qb(x)], -1), rtol=1e-6, atol=1e-6)
    assert stack_linears([qa, a]) is None  # integer and float
