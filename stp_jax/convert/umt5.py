"""umT5 encoder checkpoints (Wan's ``models_t5_umt5-xxl-enc-bf16.pth`` or transformers'
``UMT5EncoderModel``) <-> UMT5Encoder params. Canonical layout: Wan's original names."""
from __future__ import annotations

import re

import jax

from stp_jax.convert.core import ConversionError, Rule, StateDict, apply_table, read_state_dict, strip_common_prefix
from stp_jax.models.text import UMT5Config, UMT5Encoder

_HF_TO_ORIGINAL = [
    (r"(?:encoder\.embed_tokens|shared)\.weight$", "token_embedding.weight"),
    (r"encoder\.block\.(\d+)\.layer\.0\.layer_norm\.weight$", r"blocks.\1.norm1.weight"),
    (r"encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])\.weight$", r"blocks.\1.attn.\2.weight"),
    (r"encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias\.weight$",
     r"blocks.\1.pos_embedding.embedding.weight"),
    (r"encoder\.block\.(\d+)\.layer\.1\.layer_norm\.weight$", r"blocks.\1.norm2.weight"),
    (r"encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_0\.weight$", r"blocks.\1.ffn.gate.0.weight"),
    (r"encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_1\.weight$", r"blocks.\1.ffn.fc1.weight"),
    (r"encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wo\.weight$", r"blocks.\1.ffn.fc2.weight"),
    (r"encoder\.final_layer_norm\.weight$", "norm.weight"),
]


def is_umt5(keys) -> bool:
    keys = set(keys)
    return bool(keys & {"shared.weight", "encoder.embed_tokens.weight", "token_embedding.weight"}) and any(
        ".SelfAttention." in k or ".attn.q." in k for k in keys)


def to_original_layout(sd: StateDict) -> StateDict:
    sd = strip_common_prefix(sd, ("model.", "module."))
    if any(k.startswith("encoder.") for k in sd):
        # transformers ties shared/embed_tokens: keep one copy (they are the same tensor)
        if "shared.weight" in sd and "encoder.embed_tokens.weight" in sd:
            sd = StateDict({k: sd._entries[k] for k in sd if k != "encoder.embed_tokens.weight"}, sd.source)

        def ren(k):
            for pat, rep in _HF_TO_ORIGINAL:
                new, n = re.subn(pat, rep, k)
                if n:
                    return new
            return k

        sd = sd.renamed(ren)
    return sd


def umt5_rules(cfg: UMT5Config) -> list[Rule]:
    d, h, k, f = cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff
    rules = [Rule("token_embedding.weight", ("token_embedding",), (cfg.vocab_size, d)),
             Rule("norm.weight", ("norm",), (d,))]
    for i in range(cfg.num_layers):
        b = f"blocks.{i}."
        rules += [
            Rule(b + "norm1.weight", ("blocks", "norm1"), (d,), layer=i),
            Rule(b + "norm2.weight", ("blocks", "norm2"), (d,), layer=i),
            Rule(b + "pos_embedding.embedding.weight", ("blocks", "pos_embedding"), (cfg.num_buckets, h), layer=i),
            Rule(b + "attn.o.weight", ("blocks", "o", "kernel"), (d, h * k), "linear", layer=i),
            Rule(b + "ffn.gate.0.weight", ("blocks", "gate", "kernel"), (f, d), "linear", layer=i),
            Rule(b + "ffn.fc1.weight", ("blocks", "fc1", "kernel"), (f, d), "linear", layer=i),
            Rule(b + "ffn.fc2.weight", ("blocks", "fc2", "kernel"), (d, f), "linear", layer=i),
        ]
        rules += [Rule(b + f"attn.{p}.weight", ("blocks", p, "kernel"), (h * k, d), "linear", layer=i) for p in "qkv"]
    return rules


def infer_umt5_config(sd: StateDict, num_heads: int | None, hints: dict) -> UMT5Config:
    v, d = sd.shape("token_embedding.weight")
    layers = 1 + max(int(m[1]) for key in sd if (m := re.match(r"blocks\.(\d+)\.", key)))
    buckets, heads = sd.shape("blocks.0.pos_embedding.embedding.weight")
    if num_heads and num_heads != heads:
        raise ConversionError(f"--num-heads {num_heads} contradicts the relative-bias table ({heads} heads)")
    inner = sd.shape("blocks.0.attn.q.weight")[0]
    return UMT5Config(vocab_size=v, d_model=d, d_kv=inner // heads, d_ff=sd.shape("blocks.0.ffn.fc1.weight")[0],
                      num_layers=layers, num_heads=heads, num_buckets=buckets,
                      max_distance=int(hints.get("relative_attention_max_distance", 128)),
                      eps=float(hints.get("layer_norm_epsilon", 1e-6)))


def umt5_abstract_params(cfg: UMT5Config):
    import jax.numpy as jnp
    from flax import linen as nn

    shapes = jax.eval_shape(lambda: UMT5Encoder(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32),
                                                          jnp.ones((1, 4), jnp.int32)))
    return nn.unbox(shapes)["params"]


def convert_umt5(src, num_heads=None, param_dtype="float32", hints: dict | None = None):
    sd = to_original_layout(read_state_dict(src))
    if "token_embedding.weight" not in sd:
        raise ConversionError(f"{src}: not a umT5 encoder checkpoint (no token embedding)")
    cfg = infer_umt5_config(sd, num_heads, hints or {}).replace(param_dtype=param_dtype)
    rules = umt5_rules(cfg)
    params = apply_table(sd, rules, umt5_abstract_params(cfg), f"a umT5 encoder with {cfg.num_layers} layers",
                         dtype=param_dtype)
    meta = {"source": str(src), "model": "UMT5Encoder",
            "torch_dtypes": {r.torch_key: sd.dtype(r.torch_key) for r in rules}}
    return cfg, params, meta
