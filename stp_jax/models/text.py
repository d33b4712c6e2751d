"""umT5 encoder (Wan's text encoder) and its tokenizer, loaded from a local folder.

Per docs/REFERENCE.md §4: T5-style RMS norm (no mean, no bias, fp32 statistics), per-layer
relative position bias (32 bidirectional buckets, max distance 128), no 1/sqrt(d)
attention scaling, gated-GELU(tanh) FFN, final norm. Padding keys are masked.

Letters as in stp_jax/models/layers.py (L = S = the prompt's tokens; D d_model, K d_kv, M d_ff);
R relative-position buckets.
"""
from __future__ import annotations

import dataclasses
import html
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from stp_jax.config_utils import JsonConfig
from stp_jax.models.layers import Dense, gelu_tanh

TEXT_LEN = 512  # Wan pads/trims text states to this many tokens


@dataclasses.dataclass(frozen=True)
class UMT5Config(JsonConfig):
    vocab_size: int = 256384
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6
    dtype: str = "float32"
    param_dtype: str = "float32"


def relative_buckets(q_len: int, k_len: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bidirectional T5 buckets [S_q, S_k] of (key position - query position), host-side."""
    rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).astype(np.int64) * half
    rel = np.abs(rel)
    exact = half // 2
    safe = np.maximum(rel, 1).astype(np.float32)
    large = exact + (np.log(safe / exact) / math.log(max_distance / exact) * (half - exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    return buckets + np.where(rel < exact, rel, large)


def rms_norm(x, scale, eps):
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), -1, keepdims=True) + eps)
    return (y * scale.astype(jnp.float32)).astype(x.dtype)


class UMT5Block(nn.Module):
    cfg: UMT5Config

    @nn.compact
    def __call__(self, x, bias_buckets, mask_bias):
        # x [B, S, D]; bias_buckets [S, S] int; mask_bias [B, 1, 1, S] (0 or -inf-ish)
        c = self.cfg
        kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype), use_bias=False,
                  kernel_init=nn.initializers.normal(0.05))
        ones = nn.with_logical_partitioning(nn.initializers.ones, ("embed",))
        n1 = self.param("norm1", ones, (c.d_model,), jnp.dtype(c.param_dtype))
        h = rms_norm(x, n1, c.eps)
        proj = lambda name: Dense((c.num_heads, c.d_kv), ("embed", "heads", "kv"), name=name, **kw)(h)  # noqa: E731
        q, k, v = proj("q"), proj("k"), proj("v")  # [B, S, N, K]
        rel = self.param("pos_embedding", nn.with_logical_partitioning(nn.initializers.normal(0.1), ("freq", "heads")),
                         (c.num_buckets, c.num_heads), jnp.dtype(c.param_dtype))
        pos_bias = jnp.take(rel, bias_buckets, axis=0).transpose(2, 0, 1)[None]  # [1, N, S, S]
        scores = jnp.einsum("blnk,bsnk->bnls", q, k).astype(jnp.float32) + pos_bias.astype(jnp.float32) + mask_bias
        attn = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        o = jnp.einsum("bnls,bsnk->blnk", attn, v)
        x = x + Dense((c.d_model,), ("heads", "kv", "embed"), n_in=2, name="o", **kw)(o)
        n2 = self.param("norm2", ones, (c.d_model,), jnp.dtype(c.param_dtype))
        h = rms_norm(x, n2, c.eps)
        gate = gelu_tanh(Dense((c.d_ff,), ("embed", "mlp"), name="gate", **kw)(h))
        h = gate * Dense((c.d_ff,), ("embed", "mlp"), name="fc1", **kw)(h)
        x = x + Dense((c.d_model,), ("mlp", "embed"), name="fc2", **kw)(h)
        return x, None


class UMT5Encoder(nn.Module):
    cfg: UMT5Config

    @nn.compact
    def __call__(self, ids, mask):
        """ids [B, S] int, mask [B, S] (1 = token) -> hidden states [B, S, D] (padding rows included)."""
        c = self.cfg
        emb = self.param("token_embedding", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
                         (c.vocab_size, c.d_model), jnp.dtype(c.param_dtype))
        x = jnp.take(emb, ids, axis=0).astype(jnp.dtype(c.dtype))
        s = ids.shape[1]
        buckets = jnp.asarray(relative_buckets(s, s, c.num_buckets, c.max_distance))
        mask_bias = jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
        blocks = nn.scan(UMT5Block, variable_axes={"params": 0}, split_rngs={"params": True},
                         in_axes=(nn.broadcast, nn.broadcast), length=c.num_layers,
                         metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = blocks(c, name="blocks")(x, buckets, mask_bias)
        norm = self.param("norm", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (c.d_model,),
                          jnp.dtype(c.param_dtype))
        return rms_norm(x, norm, c.eps)


# Wan2.1's default negative prompt for classifier-free guidance (its shared config's
# ``sample_neg_prompt``), used by stp-sample when a text encoder is given.
WAN_NEGATIVE_PROMPT = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
                       "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，"
                       "形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")


def wan_text_states(hidden, mask, text_len: int = TEXT_LEN):
    """Wan's use of the encoder output: keep each prompt's true tokens, zero the rest, and
    pad/trim to ``text_len``. hidden [B, S, D], mask [B, S] -> [B, text_len, D]."""
    h = jnp.where(mask[..., None] > 0, hidden, 0.0)
    s = h.shape[1]
    if s >= text_len:
        return h[:, :text_len]
    return jnp.pad(h, ((0, 0), (0, text_len - s), (0, 0)))


# ---------------------------------------------------------------- tokenizer


def clean_prompt(text: str) -> str:
    """A prompt as Wan cleans it before tokenizing (docs/REFERENCE.md §6.2): ``ftfy.fix_text``,
    HTML entities unescaped twice, stripped, runs of whitespace collapsed to one space."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()



class Tokenizer:
    """umT5 tokenizer from a local folder (``tokenizer.json`` via tokenizers, or
    ``spiece.model`` via sentencepiece). Cleans each prompt as Wan does (``clean_prompt``),
    appends </s> (id 1) as T5 does; pads with 0."""

    def __init__(self, path):
        p = Path(path)
        self.path = p
        tj, sp = p / "tokenizer.json", p / "spiece.model"
        if p.is_file():
            tj, sp = (p, None) if p.suffix == ".json" else (None, p)
        if tj is not None and tj.exists():
            from tokenizers import Tokenizer as HFTokenizer

            self._tok = HFTokenizer.from_file(str(tj))
            self._encode = lambda text: self._tok.encode(text, add_special_tokens=False).ids
            self._decode = lambda ids: self._tok.decode(ids)
        elif sp is not None and sp.exists():
            import sentencepiece as spm

            self._tok = spm.SentencePieceProcessor(model_file=str(sp))
            self._encode = lambda text: self._tok.encode(text)
            self._decode = lambda ids: self._tok.decode(ids)
        else:
            raise FileNotFoundError(f"{p}: no tokenizer.json or spiece.model found")
        self.eos_id, self.pad_id = 1, 0

    def __call__(self, texts: list[str], max_len: int = TEXT_LEN) -> tuple[np.ndarray, np.ndarray]:
        """-> ids [B, max_len] int32, mask [B, max_len] int32 (truncated to max_len, </s> kept)."""
        ids = np.zeros((len(texts), max_len), np.int32)
        mask = np.zeros((len(texts), max_len), np.int32)
        for i, t in enumerate(texts):
            toks = list(self._encode(clean_prompt(t)))[: max_len - 1] + [self.eos_id]
            ids[i, : len(toks)] = toks
            mask[i, : len(toks)] = 1
        return ids, mask

    def decode(self, ids) -> str:
        return self._decode([int(i) for i in ids if int(i) not in (self.pad_id, self.eos_id)])


def precompute_text_cache(path, prompts: dict[str, str], model: UMT5Encoder, params, tokenizer: Tokenizer,
                          text_len: int = TEXT_LEN, batch: int = 8) -> Path:
    """Encode every prompt once and store Wan's text states [N, text_len, D] by key (npz),
    so training and sampling never run the 5.7B-parameter encoder again."""
    keys = list(prompts)
    enc = jax.jit(lambda p, i, m: wan_text_states(model.apply({"params": p}, i, m), m, text_len))
    states, lengths = [], []
    for s in range(0, len(keys), batch):
        ids, mask = tokenizer([prompts[k] for k in keys[s:s + batch]], text_len)
        states.append(np.asarray(enc(params, ids, mask), np.float32))
        lengths.append(mask.sum(1))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, keys=np.asarray(keys), states=np.concatenate(states), lengths=np.concatenate(lengths))
    return out


def load_text_cache(path) -> dict[str, np.ndarray]:
    """key -> text states [text_len, D] from a cache written by precompute_text_cache."""
    try:
        d = np.load(path, allow_pickle=False)
        return {str(k): d["states"][i] for i, k in enumerate(d["keys"])}
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: not a text-embedding cache (npz with keys/states/lengths): {e}") from e
