"""A LLaMA-style decoder language model with a Mixture-of-Channels or dense SwiGLU FFN.

- LLaMA: Touvron et al., "LLaMA: Open and Efficient Foundation Language Models", 2023
  (arXiv:2302.13971): pre-norm blocks with RMSNorm (Zhang & Sennrich, 2019), rotary position
  embeddings (Su et al., "RoFormer", arXiv:2104.09864), SwiGLU FFN (Shazeer, arXiv:2002.05202);
  grouped-query attention (Ainslie et al., "GQA", EMNLP 2023, arXiv:2305.13245).
- MoC: Wu, He, Wang, Yuan, "Mixture-of-Channels: Exploiting Sparse FFNs for Efficient LLMs
  Pre-Training and Inference", 2025 (arXiv:2511.09323): each token keeps only the top-K channels of
  SwiGLU's gate (the ``moc_ffn`` block); ``top_k=None`` is the dense SwiGLU twin.

Keys read like Hugging Face LLaMA checkpoints without the ``model.`` prefix: ``embed_tokens``,
``layers.{i}.attn_norm``, ``layers.{i}.attn.{q,k,v,o}_proj``, ``layers.{i}.ffn_norm``,
``layers.{i}.ffn.{gate,up,down}_proj``, ``norm``, ``lm_head`` (absent when tied to the embedding);
:func:`checkpoint_filter_fn` maps HF's own names (``self_attn``, ``mlp``, ``input_layernorm``, ...).
RoPE rotates the two halves of each head (HF's ``rotate_half`` layout), so HF weights need no permutation.

``model(input_ids)`` takes (B, T) token ids and returns (B, T, vocab_size) logits; with a
:mod:`~zoo.models.kv_cache` cache it appends the new tokens' keys and values and places them after
the cached ones. ``model.generate(...)`` samples (see :mod:`zoo.models.decoding`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from zoo import blocks
from zoo.blocks.quant import stack_linears
from zoo.blocks.validation import check_tensor, owner_name, values_readable

from ..builder import build_model
from ..pretrained import PretrainedCfg
from ..pruning.groups import Group
from ..registry import register_model, register_pretrained_cfgs
from .decoding import generate
from .kv_cache import KVCache, make_cache

__all__ = ["MoCLM", "MoCLMConfig", "Attention", "DecoderBlock", "rope_cos_sin", "apply_rope", "checkpoint_filter_fn"]

@dataclass(frozen=True)
class MoCLMConfig:
    """The decoder's shape. ``top_k=None`` is the dense SwiGLU FFN; ``n_kv_heads`` must divide ``n_heads``."""

    vocab_size: int = 257
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: n_heads (multi-head attention)
    hidden_dim: int = 688
    top_k: int | None = None
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        kv = self.n_heads if self.n_kv_heads is None else self.n_kv_heads
        object.__setattr__(self, "n_kv_heads", kv)
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "hidden_dim", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)}")
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ValueError(f"dim={self.dim} must split into n_heads={self.n_heads} heads of even width (RoPE rotates "
                             f"pairs); pick n_heads dividing dim with dim / n_heads even")
        if kv < 1 or self.n_heads % kv:
            raise ValueError(f"n_kv_heads={kv} must divide n_heads={self.n_heads} (grouped-query attention)")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not 1 <= self.top_k <= self.hidden_dim):
            raise ValueError(f"top_k must be in 1..hidden_dim = 1..{self.hidden_dim}, or None for the dense SwiGLU; "
                             f"got {self.top_k}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles for ``positions`` (T,): (T, head_dim) each, halves repeated.

    Computed in fp32 on every call (a few T x D/2 products) instead of kept as buffers, so the model
    builds on the meta device and any position up to ``max_seq_len`` costs nothing extra.
    """
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]  # (T, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, D)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) queries or keys: pairs (i, i + D/2) by the angles of their position."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # (B, H, T, D)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE through ``F.scaled_dot_product_attention``; bias-free projections."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        self.q_proj = nn.Linear(dim, n_heads * self.head_dim, bias=False, **factory)
        self.k_proj = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False, **factory)
        self.v_proj = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False, **factory)
        self.o_proj = nn.Linear(n_heads * self.head_dim, dim, bias=False, **factory)
        self.qkv_proj: nn.Module | None = None  # q, k and v stacked in one layer: see merge_projections

    def merge_projections(self) -> bool:
        """Replace ``q_proj``, ``k_proj`` and ``v_proj`` by one layer of their stacked rows (``qkv_proj``): one
        GEMM and, for integer layers, one activation quantization per call instead of three (a ``w8a8`` decode
        step of ``moc_lm_130m``: 0.99x -> 1.10x of fp32 on a 2-core AMD EPYC, ``benchmarks/cpu_inference.py``).
        For inference: ``zoo.optimize`` does it on its copy, whose state dict then has ``qkv_proj`` keys. False
        (nothing changed) where the three cannot be stacked (:func:`zoo.blocks.quant.stack_linears`)."""
        if self.qkv_proj is not None:
            return True
        stacked = stack_linears([self.q_proj, self.k_proj, self.v_proj])
        if stacked is None:
            return False
        self.qkv_proj = stacked
        self.q_proj = self.k_proj = self.v_proj = None  # their rows live in qkv_proj now
        return True

    def _projections(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.qkv_proj is None:
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        kv = self.n_kv_heads * self.head_dim
        return self.qkv_proj(x).split([self.n_heads * self.head_dim, kv, kv], dim=-1)  # (B, T, H D), 2 x (B, T, H_kv D)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        t = x.shape[1]
        q, k, v = self._projections(x)
        q = rearrange(q, "b t (h d) -> b h t d", d=self.head_dim)  # (B, H, T, D)
        k = rearrange(k, "b t (h d) -> b h t d", d=self.head_dim)  # (B, H_kv, T, D)
        v = rearrange(v, "b t (h d) -> b h t d", d=self.head_dim)  # (B, H_kv, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H_kv, P + T, D): earlier tokens first
        past = k.shape[2] - t
        gqa = self.n_heads != self.n_kv_heads
        if past == 0:
            # causal even for one token (its 1x1 mask is all true): a flag that depends on t would be a
            # symbolic bool under torch.export with a dynamic sequence length, which SDPA refuses
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        elif t == 1:  # one new token sees everything cached
            out = F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
        else:
            # SDPA's is_causal aligns the mask top-left; new query i sits at position past + i
            mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(diagonal=past)  # (T, P + T)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.o_proj(rearrange(out, "b h t d -> b t (h d)"))  # (B, T, dim)


class DecoderBlock(nn.Module):
    """``x + attn(attn_norm(x))``, then ``x + ffn(ffn_norm(x))`` (pre-norm, as LLaMA)."""

    def __init__(self, cfg: MoCLMConfig, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.attn_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps, **factory)
        self.attn = Attention(cfg.dim, cfg.n_heads, cfg.n_kv_heads, **factory)
        self.ffn_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps, **factory)
        if cfg.top_k is None:
            self.ffn = blocks.create("swiglu", cfg.dim, hidden_dim=cfg.hidden_dim, **factory)
        else:
            self.ffn = blocks.create("moc_ffn", cfg.dim, hidden_dim=cfg.hidden_dim, top_k=cfg.top_k, **factory)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, layer)
        return x + self.ffn(self.ffn_norm(x))


class MoCLM(nn.Module):
    """Decoder-only LM: token embedding, ``n_layers`` :class:`DecoderBlock`s, final RMSNorm, LM head.

    Args: the fields of :class:`MoCLMConfig` (``vocab_size``, ``dim``, ``n_layers``, ``n_heads``,
    ``n_kv_heads``, ``hidden_dim``, ``top_k``, ``max_seq_len``, ``rope_theta``, ``norm_eps``,
    ``tie_embeddings``), plus ``device`` and ``dtype``. ``model.config`` holds them.
    """

    pipeline_tag = "text-generation"  # the Hugging Face hub's task, for the model card

    def __init__(self, vocab_size: int = 257, dim: int = 256, n_layers: int = 4, n_heads: int = 4,
                 n_kv_heads: int | None = None, hidden_dim: int = 688, top_k: int | None = None,
                 max_seq_len: int = 256, rope_theta: float = 10000.0, norm_eps: float = 1e-6,
                 tie_embeddings: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        cfg = MoCLMConfig(vocab_size, dim, n_layers, n_heads, n_kv_heads, hidden_dim, top_k, max_seq_len,
                          rope_theta, norm_eps, tie_embeddings)
        factory = {"device": device, "dtype": dtype}
        self.config = cfg
        self.vocab_size, self.max_seq_len = cfg.vocab_size, cfg.max_seq_len
        self.num_features = self.embed_dim = cfg.dim
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim, **factory)
        self.layers = nn.ModuleList([DecoderBlock(cfg, **factory) for _ in range(cfg.n_layers)])
        self.norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps, **factory)
        # a tied head reads the embedding table; no second key, so safetensors (no shared tensors) saves it
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False, **factory)
        self._init_weights()

    def _init_weights(self) -> None:
        """LLaMA / GaLore pretraining init: normal(0, 0.02) for the embedding and every Linear."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def _check_input(self, input_ids: torch.Tensor, past: int) -> None:
        """Ids the embedding can look up: an id outside the vocabulary is an IndexError on the CPU and a
        device-side assert on a GPU, and an empty batch a reshape error deep in attention."""
        arch = owner_name(self)
        check_tensor(arch, input_ids, "token ids (B, T)")
        if input_ids.ndim != 2 or input_ids.dtype not in (torch.long, torch.int32):
            raise ValueError(f"{arch} expects token ids (B, T) (int64 or int32); got "
                             f"{input_ids.dtype} of shape {tuple(input_ids.shape)}")
        if input_ids.shape[0] == 0:
            raise ValueError(f"{arch} got an empty batch (B = 0, shape {tuple(input_ids.shape)}); pass at least "
                             f"one sequence")
        if input_ids.shape[1] == 0:
            raise ValueError("input_ids holds no tokens (T = 0)")
        if values_readable(input_ids):
            lo, hi = (int(v) for v in torch.aminmax(input_ids.detach()))
            if lo < 0 or hi >= self.config.vocab_size:
                raise ValueError(f"token ids must lie in 0..{self.config.vocab_size - 1} (vocab_size="
                                 f"{self.config.vocab_size}); got values from {lo} to {hi}: encode with the model's "
                                 f"tokenizer, or build the model with a larger vocab_size")
        if past + input_ids.shape[1] > self.max_seq_len:
            where = f" after {past} cached tokens" if past else ""
            raise ValueError(f"{input_ids.shape[1]} tokens{where} exceed the context max_seq_len={self.max_seq_len}; "
                             f"pass at most {self.max_seq_len - past} (truncate from the left, or build the model with "
                             f"a larger max_seq_len)")

    def forward_features(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """(B, T) token ids -> final-normed hidden states (B, T, dim); with ``cache``, positions start at its length."""
        past = 0 if cache is None else cache.seq_len(0)
        self._check_input(input_ids, past)
        x = self.embed_tokens(input_ids)  # (B, T, dim)
        positions = torch.arange(past, past + input_ids.shape[1], device=input_ids.device)  # (T,)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) hidden states -> (B, T, vocab_size) logits."""
        return F.linear(x, self.embed_tokens.weight) if self.lm_head is None else self.lm_head(x)

    def pruning_groups(self) -> list[Group]:
        """What :func:`zoo.prune` removes: each layer's FFN hidden channels (rows of ``gate_proj`` and
        ``up_proj``, columns of ``down_proj``; a Mixture-of-Channels FFN keeps its ``top_k`` unless fewer
        channels are left) and its attention heads by key-value head: with grouped-query attention, query
        head ``h`` reads key-value head ``h // (n_heads / n_kv_heads)``, so one channel of the group is a
        key-value head (``head_dim`` rows of ``k_proj`` and ``v_proj``) with its run of query heads (as many
        ``head_dim`` rows of ``q_proj``, columns of ``o_proj``). The model width stays: the embedding and
        every residual add share it. The caches size themselves from the keys they are given."""
        groups = []
        for i, layer in enumerate(self.layers):
            attn, name = layer.attn, f"layers.{i}.attn"
            share = attn.n_heads // attn.n_kv_heads  # query heads per key-value head
            span = share * attn.head_dim
            groups.append(Group(f"layers.{i}.heads").add(name, "attr:n_kv_heads").add(name, "attr:n_heads", unit=share)
                          .add(f"{name}.k_proj", "out", unit=attn.head_dim).add(f"{name}.v_proj", "out", unit=attn.head_dim)
                          .add(f"{name}.q_proj", "out", unit=span).add(f"{name}.o_proj", "in", unit=span))
            groups.append(Group(f"layers.{i}.ffn").add(f"layers.{i}.ffn", "hidden"))
        return groups

    def example_inputs(self, batch: int, size: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor]:
        """A forward's arguments for smoke runs (``python -m zoo check``): up to 64 random token ids."""
        length = min(64, self.config.max_seq_len)
        return (torch.randint(0, self.config.vocab_size, (batch, length), generator=generator),)  # (B, T)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None, logits_to_keep: int = 0) -> torch.Tensor:
        """(B, T) token ids -> (B, T, vocab_size) next-token logits; ``logits_to_keep=n`` (Hugging Face's argument)
        computes only the last n positions' (B, n, vocab_size): generation needs the last one of a prompt, and the
        head over every position is a quarter of a 256-token prefill of ``moc_lm_130m``."""
        if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be an int >= 0 (0: every position); got {logits_to_keep!r}")
        x = self.forward_features(input_ids, cache)  # (B, T, dim)
        return self.forward_head(x[:, -logits_to_keep:] if logits_to_keep else x)  # (B, n or T, vocab_size)

    def make_cache(self, kind: str | KVCache | None = "dense", **kwargs: Any) -> KVCache | None:
        """A KV cache for this model: ``dense``, ``kivi4``, ``kivi2``, a :class:`KVCache`, or None."""

        return make_cache(kind, self.config.n_layers, max_len=self.max_seq_len, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
                 generator: torch.Generator | None = None, cache: str | KVCache | None = "dense",
                 stream: Callable[[torch.Tensor], Any] | None = None) -> torch.Tensor:
        """Extend ``input_ids`` (B, T) by up to ``max_new_tokens``; returns (B, T + new) ids.

        ``temperature=0`` is greedy; ``top_k`` / ``top_p`` restrict sampling; generation stops early
        once every row has produced ``eos_id`` (rows that finished repeat it). ``cache``: ``dense``,
        ``kivi4``, ``kivi2``, a cache, or None (recompute the whole sequence every step). ``stream``
        is called with each step's (B,) tokens as they arrive; :func:`zoo.models.decoding.stream_tokens`
        is the iterator form.
        """
        return generate(self, input_ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        eos_id=eos_id, generator=generator, cache=cache, stream=stream)


_HF_RULES = [
    (r"^model\.", ""),
    (r"\.self_attn\.", ".attn."),
    (r"\.mlp\.", ".ffn."),
    (r"\.input_layernorm\.", ".attn_norm."),
    (r"\.post_attention_layernorm\.", ".ffn_norm."),
]


def checkpoint_filter_fn(state_dict: dict, model: MoCLM) -> dict:
    """Hugging Face LLaMA names -> this model's; drops RoPE tables and, for a tied model, ``lm_head``."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        for pattern, repl in _HF_RULES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    if model.lm_head is None:
        out.pop("lm_head.weight", None)
    return out


def _cfg(**kwargs: Any) -> PretrainedCfg:
    return PretrainedCfg(**{
        "input_size": (256,), "mean": (0.0,), "std": (1.0,), "interpolation": "", "crop_pct": 1.0,
        "num_classes": 0, "first_conv": "embed_tokens", "classifier": "lm_head",
        "paper": "https://arxiv.org/abs/2511.09323", "origin_url": "", "license": "apache-2.0",
        "notes": "no released weights: train with configs/moc_lm_tiny.yaml, or load your own file with pretrained=<path>",
        **kwargs})


_BYTE = {"tokenizer": "byte"}
_T5 = {"tokenizer": "hf:t5-base"}  # GaLore's C4 runs: T5's sentencepiece vocabulary, 32000 ids used
default_cfgs = register_pretrained_cfgs({
    "moc_lm": _cfg(extra=_BYTE),
    "moc_lm_tiny": _cfg(extra=_BYTE),
    "dense_lm_tiny": _cfg(extra=_BYTE),
    "moc_lm_130m": _cfg(input_size=(1024,), extra=_T5),
    "dense_lm_130m": _cfg(input_size=(1024,), extra=_T5),
    "moc_lm_350m": _cfg(input_size=(1024,), extra=_T5),
    "dense_lm_350m": _cfg(input_size=(1024,), extra=_T5),
})

# sizes: tiny trains on a CPU in minutes; 130m / 350m are GaLore's LLaMA-130M / 350M configs (the MoC
# paper pretrains LLaMA models of these sizes on C4)
_SIZES = {
    "tiny": dict(vocab_size=257, dim=256, n_layers=4, n_heads=4, n_kv_heads=2, hidden_dim=688, max_seq_len=256),
    "130m": dict(vocab_size=32000, dim=768, n_layers=12, n_heads=12, hidden_dim=2048, max_seq_len=1024),
    "350m": dict(vocab_size=32000, dim=1024, n_layers=24, n_heads=16, hidden_dim=2736, max_seq_len=1024),
}
# K per size: tiny at H/4 (the quality comparison of the issue), the paper-like sizes at H/8
_TOP_K = {"tiny": 688 // 4, "130m": 2048 // 8, "350m": 2736 // 8}


def _create(variant: str, pretrained: Any = False, **kwargs: Any) -> MoCLM:
    return build_model(MoCLM, variant, pretrained, filter_fn=checkpoint_filter_fn, **kwargs)


def _sized(variant: str, size: str, moc: bool, pretrained: Any, **kwargs: Any) -> MoCLM:
    args = {**_SIZES[size], "top_k": _TOP_K[size] if moc else None}
    return _create(variant, pretrained, **{**args, **kwargs})


@register_model
def moc_lm(pretrained: Any = False, **kwargs: Any) -> MoCLM:
    """The decoder with every :class:`MoCLMConfig` field free (defaults: the tiny shape, dense FFN)."""
    return _create("moc_lm", pretrained, **kwargs)


@register_model
def moc_lm_tiny(pretrained: Any = False, **kwargs: Any) -> MoCLM:
    """256 wide, 4 layers, 4 heads (2 KV heads), FFN 688 with top-K = 172 (H/4), byte vocabulary, 256 tokens."""
    return _sized("moc_lm_tiny", "tiny", True, pretrained, **kwargs)


@register_model
def dense_lm_tiny(pretrained: Any = False, **kwargs: Any) -> MoCLM:
    """The dense SwiGLU twin of :func:`moc_lm_tiny`."""
    return _sized("dense_lm_tiny", "tiny", False, pretrained, **kwargs)


@register_model
def moc_lm_130m(pretrained: Any = False, **kwargs: Any) -> MoCLM:
    """LLaMA-130M (768 wide, 12 layers, 12 heads, FFN 2048) with top-K = 256 (H/8), 32000 tokens, 1024 context."""
    return _sized("moc_lm_130m", "130m", True, pretrained, **kwargs)


@register_model
def dense_lm_130m(pretrained: Any = False, **kwargs: Any) -> MoCLM:
    """The dense twin of :func:`moc_lm_130m` (GaLore's LLaMA-130M)."""
    return _sized("dense_lm_130m", "130m", False, pretrained, **kwargs)


@register_model
def moc_lm_350m(pretrained: Any = False, **kwargs: Any) -> MoCLM:
    """LLaMA-350M (1024 wide, 24 layers, 16 heads, FFN 2736) with top-K = 342 (H/8), 32000 tokens, 1024 context."""
    return _sized("moc_lm_350m", "350m", True, pretrained, **kwargs)


@register_model
def dense_lm_350m(pretrained: Any = False, **kwargs: Any) -> MoCLM:
    """The dense twin of :func:`moc_lm_350m` (GaLore's LLaMA-350M)."""
    return _sized("dense_lm_350m", "350m", False, pretrained, **kwargs)

