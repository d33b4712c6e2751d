"""umT5 encoder vs transformers' UMT5EncoderModel; tokenizer; PatchAutoencoder."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from stp_jax.cli import convert_main
from stp_jax.convert import load_pretrained
from stp_jax.models.text import Tokenizer, relative_buckets, wan_text_states
from stp_jax.models.vae import PatchAutoencoder


@pytest.fixture(scope="module")
def hf_umt5():
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    cfg = UMT5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=3, num_heads=4,
                     relative_attention_num_buckets=32, relative_attention_max_distance=128,
                     feed_forward_proj="gated-gelu")
    m = UMT5EncoderModel(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_((1.0 if "layer_norm" in name else 0.0) + torch.randn(p.shape, generator=g) * 0.3)
    return m


def _batch():
    g = np.random.default_rng(0)
    ids = g.integers(2, 64, (2, 40)).astype(np.int64)
    mask = np.ones((2, 40), np.int64)
    mask[1, 23:] = 0  # padded prompt
    ids[1, 23:] = 0
    return ids, mask


@pytest.mark.parametrize("layout", ["transformers", "wan"])
def test_umt5_parity(hf_umt5, layout, tmp_path):
    ids, mask = _batch()
    with torch.no_grad():
        want = hf_umt5(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    if layout == "transformers":
        hf_umt5.save_pretrained(tmp_path / "hf", safe_serialization=True)
        src = tmp_path / "hf"
    else:  # Wan's original names (docs/REFERENCE.md §4), written here from the transformers keys
        ren = {"layer.0.layer_norm": "norm1", "layer.0.SelfAttention.relative_attention_bias": "pos_embedding.embedding",
               "layer.1.layer_norm": "norm2", "layer.1.DenseReluDense.wi_0": "ffn.gate.0",
               "layer.1.DenseReluDense.wi_1": "ffn.fc1", "layer.1.DenseReluDense.wo": "ffn.fc2"}
        sd = {}
        for k, v in hf_umt5.state_dict().items():
            if k == "shared.weight":
                sd["token_embedding.weight"] = v
            elif k == "encoder.final_layer_norm.weight":
                sd["norm.weight"] = v
            elif k.startswith("encoder.block."):
                _, _, i, rest = k.split(".", 3)
                for a, b in ren.items():
                    rest = rest.replace(a, b)
                rest = rest.replace("layer.0.SelfAttention.", "attn.")
                sd[f"blocks.{i}.{rest}"] = v
        torch.save(sd, tmp_path / "umt5.pth")
        src = tmp_path / "umt5.pth"
    convert_main([str(src), "--out", str(tmp_path / "jax")])
    model, params = load_pretrained(tmp_path / "jax")
    got = np.asarray(jax.jit(lambda p, i, m: model.apply({"params": p}, i, m))(params, ids, mask))
    valid = mask.astype(bool)
    err = np.abs(got - want)[valid].max()
    assert err <= 1e-4, err
    assert np.abs(want).max() > 0.1
    out = np.asarray(wan_text_states(jnp.asarray(got), jnp.asarray(mask), text_len=64))
    assert out.shape == (2, 64, 32) and (out[1, 23:] == 0).all() and (out[:, 40:] == 0).all()


def test_relative_buckets_match_transformers(hf_umt5):
    attn = hf_umt5.encoder.block[0].layer[0].SelfAttention
    rel = torch.arange(300)[None, :] - torch.arange(300)[:, None]
    want = attn._relative_position_bucket(rel).numpy()
    np.testing.assert_array_equal(relative_buckets(300, 300, 32, 128), want)


def test_tokenizer_round_trip(tmp_path):
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTok(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    corpus = ["a red ball bounces", "the camera orbits the scene", "time freezes", "a blue box spins slowly"] * 20
    tok.train_from_iterator(corpus, trainers.UnigramTrainer(vocab_size=60, special_tokens=["<pad>", "</s>", "<unk>"],
                                                            unk_token="<unk>"))
    tok.save(str(tmp_path / "tokenizer.json"))
    t = Tokenizer(tmp_path)
    ids, mask = t(["a red ball bounces", "time freezes"], max_len=16)
    assert ids.shape == (2, 16) and mask[0].sum() > 1 and ids[0, mask[0].sum() - 1] == 1
    assert t.decode(ids[0]).strip() == "a red ball bounces"
    messy, _ = t(["  a red&amp;nbsp;ball \n\t bounces  "], max_len=16)  # cleaned as Wan cleans prompts
    np.testing.assert_array_equal(messy, ids[:1])
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        Tokenizer(tmp_path / "nowhere")


def test_prompts_cleaned_as_wan_cleans_them():
    from stp_jax.models.text import clean_prompt

    # ftfy.fix_text (mojibake, curly quotes), html unescape twice, strip, whitespace collapsed
    assert clean_prompt("  caf\u00c3\u00a9 \u201cbar\u201d\n\n&amp;amp; \t x ") == 'caf\u00e9 "bar" & x'
    assert clean_prompt("a  dog&lt;3") == "a dog<3"


@pytest.mark.parametrize("t,s,k", [(1, 4, 4), (5, 2, 4), (17, 4, 4), (9, 4, 1), (9, 2, 2)])
def test_patch_autoencoder_exact(t, s, k):
    ae = PatchAutoencoder(spatial=s, time_factor=k)
    x = jnp.asarray(np.random.default_rng(t).uniform(-1, 1, (2, t, 8, 12, 3)).astype(np.float32))
    z = ae.encode(x)
    assert z.shape == (2, 1 + (t - 1) // k, 8 // s, 12 // s, k * s * s * 3)
    if k == 1:  # one latent frame per video frame: latent frame j is frame j alone
        np.testing.assert_array_equal(np.asarray(z[:, 3]), np.asarray(PatchAutoencoder(s, time_factor=1).encode(
            jnp.repeat(x[:, 3:4], 1, axis=1))[:, 0]))
    assert z.shape[:4] == (2,) + ae.latent_shape(t, 8, 12)[:3]
    np.testing.assert_array_equal(np.asarray(ae.decode(z)), np.asarray(x))
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        ae.encode(jnp.zeros((1, 4, 8, 8, 3)))
    with pytest.raises(ValueError, match="time_factor"):
        PatchAutoencoder(time_factor=3)


def test_model_times_feed_the_dit_four_per_latent_frame():
    """A clip's times as the DiT's time embedding reads them (1 + 4(F - 1) values)."""
    from stp_jax.controls.timing import model_times
    from stp_jax.models.conditioning import temporal_chunks

    t = np.array([[0, 5, 6, 2, 9]])
    assert model_times(t, 4) is t
    one = model_times(t, 1)
    assert one.tolist() == [[0, 5, 5, 5, 5, 6, 6, 6, 6, 2, 2, 2, 2, 9, 9, 9, 9]] and temporal_chunks(one.shape[1]) == 5
    assert np.asarray(model_times(jnp.asarray(t), 2)).tolist() == [[0, 5, 5, 6, 6, 2, 2, 9, 9]]


def test_text_cache_round_trip(hf_umt5, tmp_path):
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from stp_jax.models.text import load_text_cache, precompute_text_cache

    tok = HFTok(models.Unigram())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.train_from_iterator(["a ball", "a box spins", "time stops"] * 10,
                            trainers.UnigramTrainer(vocab_size=40, special_tokens=["<pad>", "</s>", "<unk>"],
                                                    unk_token="<unk>"))
    tok.save(str(tmp_path / "tokenizer.json"))
    hf_umt5.save_pretrained(tmp_path / "hf", safe_serialization=True)
    convert_main([str(tmp_path / "hf"), "--out", str(tmp_path / "jax")])
    model, params = load_pretrained(tmp_path / "jax")
    t = Tokenizer(tmp_path)
    prompts = {"scene1": "a ball", "scene2": "a box spins", "null": ""}
    precompute_text_cache(tmp_path / "cache.npz", prompts, model, params, t, text_len=16, batch=2)
    cache = load_text_cache(tmp_path / "cache.npz")
    assert set(cache) == set(prompts) and cache["scene1"].shape == (16, 32)
    ids, mask = t(["a box spins"], 16)
    want = np.asarray(wan_text_states(model.apply({"params": params}, ids, mask), mask, 16))[0]
    np.testing.assert_allclose(cache["scene2"], want, atol=1e-5)
    assert (cache["scene2"][mask[0].sum():] == 0).all()
    with pytest.raises(ValueError, match="text-embedding cache"):
        load_text_cache(tmp_path / "tokenizer.json")
