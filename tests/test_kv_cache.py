"""KV caches: the dense cache returns exactly what was appended; the KIVI caches' error bounds and bytes."""
from __future__ import annotations

import pytest
import torch

from zoo.models.kv_cache import ChunkQuantizedKVCache, DenseKVCache, QuantizedKVCache, make_cache


def _kv(b=2, h=2, t=37, d=16, dtype=torch.float32):
    return torch.randn(b, h, t, d, dtype=dtype), torch.randn(b, h, t, d, dtype=dtype)


@pytest.mark.parametrize("max_len", [None, 40])
def test_dense_cache_returns_everything_appended(max_len):
    k, v = _kv()
    cache = DenseKVCache(num_layers=2, max_len=max_len)
    for start, stop in ((0, 5), (5, 6), (6, 30), (30, 37)):  # grows past the first capacity of 16
        keys, values = cache.update(1, k[:, :, start:stop], v[:, :, start:stop])
        assert torch.equal(keys, k[:, :, :stop]) and torch.equal(values, v[:, :, :stop])
    assert cache.seq_len(1) == 37 and cache.seq_len(0) == 0
    assert cache.nbytes() == 2 * k.numel() * 4  # stored tokens, not the spare capacity
    cache.reset()
    assert len(cache) == 0 and cache.seq_len(1) == 0


def test_dense_cache_rejects_bad_input():
    k, v = _kv(t=4)
    with pytest.raises(ValueError, match="max_len=3"):
        DenseKVCache(1, max_len=3).update(0, k, v)
    with pytest.raises(ValueError, match=r"\(B, H_kv, T, head_dim\)"):
        DenseKVCache(1).update(0, k[0], v[0])
    cache = DenseKVCache(1)
    cache.update(0, k, v)
    with pytest.raises(ValueError, match="reset"):
        cache.update(0, k[:1], v[:1])
    with pytest.raises(IndexError, match="2 layers"):
        DenseKVCache(2).update(2, k, v)


def _group_range(x: torch.Tensor, group: int, axis: int) -> torch.Tensor:
    """max - min of each group of ``group`` consecutive elements along ``axis``, broadcast back to x's shape."""
    moved = x.movedim(axis, -1)  # (..., A)
    g = moved.unflatten(-1, (-1, group))  # (..., A / group, group)
    rng = (g.amax(-1, keepdim=True) - g.amin(-1, keepdim=True)).expand_as(g)
    return rng.flatten(-2).movedim(-1, axis)


@pytest.mark.parametrize("bits", [2, 4])
def test_kivi_cache_error_is_within_half_a_step(bits):
    """Keys per channel (groups of 8 tokens), values per token (groups of 8 channels), a window of 12."""
    k, v = _kv(t=45, d=16)
    cache = QuantizedKVCache(1, bits=bits, key_group_size=8, value_group_size=8, residual_length=12)
    for start in range(0, 45, 7):  # ragged appends: the window fills and is quantized 8 tokens at a time
        keys, values = cache.update(0, k[:, :, start:start + 7], v[:, :, start:start + 7])
        new = min(start + 7, 45)
        # the step's own tokens are always seen at full precision
        assert torch.equal(keys[:, :, start:new], k[:, :, start:new])
    assert len(cache) == 45
    quantized = cache._layers[0].quantized_len
    assert quantized == 40 and 12 - 8 < 45 - quantized <= 12  # window between R - G + 1 and R tokens
    keys, values = cache.dequantized(0)
    assert torch.equal(keys[:, :, quantized:], k[:, :, quantized:])  # the window is exact
    assert torch.equal(values[:, :, quantized:], v[:, :, quantized:])
    step = 2**bits - 1
    k_err = (keys[:, :, :quantized] - k[:, :, :quantized]).abs()
    v_err = (values[:, :, :quantized] - v[:, :, :quantized]).abs()
    k_bound = _group_range(k[:, :, :quantized], 8, axis=2) / step / 2  # half a step of each key group
    v_bound = _group_range(v[:, :, :quantized], 8, axis=3) / step / 2
    assert (k_err <= k_bound * (1 + 1e-5) + 1e-6).all()
    assert (v_err <= v_bound * (1 + 1e-5) + 1e-6).all()
    # and it did quantize: the mean error is a sizeable share of the bound (uniform rounding: 1/2 of it)
    assert 0.3 < float(k_err.mean() / k_bound.mean()) < 0.7
    assert 0.3 < float(v_err.mean() / v_bound.mean()) < 0.7


def test_kivi_cache_bytes_against_fp16_dense():
    """4-bit KIVI with the default groups (64 tokens per key group, 64 channels per value group, a
    window of 64) at head_dim 64 and 4096 tokens, fp16 keys and values (the activation dtype of a
    half-precision model): at most 0.3x the bytes of the fp16 dense cache; 2 bits: at most 0.2x."""
    k, v = _kv(b=1, h=2, t=4096, d=64, dtype=torch.float16)
    dense, kivi4, kivi2 = DenseKVCache(1), QuantizedKVCache(1, bits=4), QuantizedKVCache(1, bits=2)
    for start in range(0, 4096, 512):
        for cache in (dense, kivi4, kivi2):
            cache.update(0, k[:, :, start:start + 512], v[:, :, start:start + 512])
    assert dense.nbytes() == 2 * k.numel() * 2
    quantized = kivi4._layers[0].quantized_len
    assert quantized == 4032  # 63 groups quantized, 64 tokens in the window
    # codes (bits / 8 a element) + an fp16 scale and zero per group of 64, for keys and values; the fp16 window
    per_tensor = 2 * 64 * quantized // 2 + 2 * 2 * 64 * (quantized // 64) * 2
    assert kivi4.nbytes() == 2 * per_tensor + 2 * (2 * 64 * 64 * 2)
    ratio4, ratio2 = kivi4.nbytes() / dense.nbytes(), kivi2.nbytes() / dense.nbytes()
    assert ratio4 <= 0.3 and ratio2 <= 0.2, (ratio4, ratio2)
    assert ratio4 > 0.25  # codes alone are 0.25x: the scales and the window are counted


def test_kivi_cache_without_quantized_tokens_is_the_dense_cache():
    k, v = _kv(t=10)
    dense, kivi = DenseKVCache(1), QuantizedKVCache(1, key_group_size=8, residual_length=16)
    for start in range(0, 10, 3):
        a = dense.update(0, k[:, :, start:start + 3], v[:, :, start:start + 3])
        b = kivi.update(0, k[:, :, start:start + 3], v[:, :, start:start + 3])
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert kivi.nbytes() == dense.nbytes()


def test_kivi_cache_rejects_bad_settings():
    with pytest.raises(ValueError, match="bits"):
        QuantizedKVCache(1, bits=3)
    with pytest.raises(ValueError, match="residual_length"):
        QuantizedKVCache(1, key_group_size=32, residual_length=16)
    k, v = _kv(d=12)
    with pytest.raises(ValueError, match="head_dim=12"):
        QuantizedKVCache(1, key_group_size=8, value_group_size=8, residual_length=8).update(0, k, v)
    with pytest.raises(ValueError, match="kivi4"):
        make_cache("kivi3", 2)
    assert make_cache(None, 2) is None
    assert isinstance(make_cache("kivi2", 2), QuantizedKVCache) and make_cache("kivi2", 2).bits == 2
    assert isinstance(make_cache("dense", 2, max_len=8), DenseKVCache)


VAR_SCALES = (1, 4, 9, 16)  # VAR's digits schedule: patch_nums 1, 2, 3, 4 (L = 30 tokens)


@pytest.mark.parametrize("bits", [2, 4])
def test_chunk_cache_error_is_within_half_a_step(bits):
    """One quantized block per update: keys per channel over the block's tokens, values per token in
    groups of 8 channels; the block itself is seen at full precision in its own step."""
    lengths = VAR_SCALES
    k, v = _kv(t=sum(lengths), d=16)
    cache = ChunkQuantizedKVCache(2, bits=bits, value_group_size=8)
    start = 0
    for n in lengths:
        keys, values = cache.update(1, k[:, :, start:start + n], v[:, :, start:start + n])
        assert keys.shape == (2, 2, start + n, 16) and values.shape == keys.shape
        assert torch.equal(keys[:, :, start:], k[:, :, start:start + n])  # the new block at full precision
        assert torch.equal(values[:, :, start:], v[:, :, start:start + n])
        start += n
    assert len(cache) == 0 and cache.seq_len(1) == 30
    keys, values = cache.dequantized(1)
    # a 1-token block's keys are one group of one element per channel: they come back exactly
    assert torch.equal(keys[:, :, :1], k[:, :, :1]) and not torch.equal(values[:, :, :1], v[:, :, :1])
    step, start = 2**bits - 1, 1
    for n in lengths[1:]:
        block_k, block_v = k[:, :, start:start + n], v[:, :, start:start + n]
        k_err = (keys[:, :, start:start + n] - block_k).abs()
        v_err = (values[:, :, start:start + n] - block_v).abs()
        k_bound = _group_range(block_k, n, axis=2) / step / 2  # half a step of the block's channel range
        v_bound = _group_range(block_v, 8, axis=3) / step / 2
        assert (k_err <= k_bound * (1 + 1e-5) + 1e-6).all()
        assert (v_err <= v_bound * (1 + 1e-5) + 1e-6).all()
        # and it did quantize: uniform rounding errs by half the bound on average, except a group's
        # minimum and maximum, which come back exactly: (G - 2) / G of it for a group of G elements
        assert abs(float(k_err.mean() / k_bound.mean()) - 0.5 * (n - 2) / n) < 0.12, n
        assert abs(float(v_err.mean() / v_bound.mean()) - 0.5 * 6 / 8) < 0.12, n
        start += n


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_chunk_cache_bytes_on_the_var_digits_schedule(dtype):
    """Scales 1, 2, 3, 4 (blocks of 1, 4, 9, 16 tokens), head_dim 64, value groups of 64 channels: per
    (batch, head) row, keys take n * bits / 8 bytes per channel plus a scale and a zero per channel and
    block, values bits / 8 per element plus a scale and a zero per token. In fp32 (the digits model's
    dtype) the 4-bit cache is 0.274x of the dense one, within the 0.3x target (KIVI's 16-token window
    kept 0.600x here); in fp16 the codes are twice the share and it is 0.399x: the four key groups per
    channel (one per scale) over only 30 tokens are what remains."""
    b, h, d = 2, 3, 64
    item = torch.empty((), dtype=dtype).element_size()
    k, v = _kv(b=b, h=h, t=30, d=d, dtype=dtype)
    dense, kivi4, kivi2 = DenseKVCache(1), ChunkQuantizedKVCache(1, bits=4), ChunkQuantizedKVCache(1, bits=2)
    start = 0
    for n in VAR_SCALES:
        for cache in (dense, kivi4, kivi2):
            cache.update(0, k[:, :, start:start + n], v[:, :, start:start + n])
        start += n
    assert dense.nbytes() == 2 * b * h * 30 * d * item
    for cache, bits in ((kivi4, 4), (kivi2, 2)):
        key_bytes = sum(n * d * bits // 8 + 2 * d * item for n in VAR_SCALES)
        value_bytes = 30 * (d * bits // 8 + 2 * item)
        assert cache.nbytes() == b * h * (key_bytes + value_bytes), bits
    ratio4, ratio2 = kivi4.nbytes() / dense.nbytes(), kivi2.nbytes() / dense.nbytes()
    want4, want2 = (0.27396, 0.21146) if dtype == torch.float32 else (0.39896, 0.27396)
    assert ratio4 == pytest.approx(want4, abs=1e-5) and ratio2 == pytest.approx(want2, abs=1e-5)
    if dtype == torch.float32:
        assert ratio4 <= 0.3


def test_chunk_cache_rejects_bad_input():
    with pytest.raises(ValueError, match="bits"):
        ChunkQuantizedKVCache(1, bits=3)
    k, v = _kv(t=4, d=12)
    with pytest.raises(ValueError, match="head_dim=12"):
        ChunkQuantizedKVCache(1, value_group_size=8).update(0, k, v)
    cache = ChunkQuantizedKVCache(1, value_group_size=4)
    cache.update(0, k, v)
    with pytest.raises(ValueError, match="reset"):
        cache.update(0, k[:1], v[:1])
    with pytest.raises(ValueError, match="stores nothing"):
        ChunkQuantizedKVCache(2).dequantized(1)
    cache.reset()
    assert len(cache) == 0 and cache.nbytes() == 0
