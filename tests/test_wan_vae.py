"""WanVAE vs diffusers' AutoencoderKLWan (random weights, tiny config with the real layout)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from stp_jax.cli import convert_main
from stp_jax.convert import ConversionError, load_pretrained
from stp_jax.convert.wan_vae import convert_wan_vae
from stp_jax.models import wan_vae


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    m = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                         temperal_downsample=[False, True, True]).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_((1.0 if name.endswith("gamma") else 0.0) + torch.randn(p.shape, generator=g) * 0.15)
    d = tmp_path_factory.mktemp("vae")
    m.save_pretrained(d / "hf", safe_serialization=True)
    convert_main([str(d / "hf"), "--out", str(d / "jax")])  # through the CLI and Orbax
    model, params = load_pretrained(d / "jax")
    cfg2, direct = convert_wan_vae(d / "hf")
    assert model.cfg == cfg2
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(direct)):
        np.testing.assert_array_equal(np.asarray(a), b)
    return m, model.cfg, params


@pytest.mark.parametrize("t", [1, 5, 9, 17])
def test_encode_decode_parity(ref, t):
    m, cfg, params = ref
    assert cfg.base_dim == 8 and cfg.temporal_downsample == (False, True, True) and cfg.num_res_blocks == 2
    g = np.random.default_rng(t)
    x = g.uniform(-1, 1, (1, 3, t, 16, 24)).astype(np.float32)  # non-square
    with torch.no_grad():
        mu = m.encode(torch.from_numpy(x)).latent_dist.mean.numpy()
    got = np.asarray(jax.jit(lambda p, v: wan_vae.encode(cfg, p, v, normalize=False))(params, x.transpose(0, 2, 3, 4, 1)))
    err = np.abs(got - mu.transpose(0, 2, 3, 4, 1)).max()
    assert got.shape == (1, 1 + (t - 1) // 4, 2, 3, 16) and err <= 1e-4, err
    z = g.standard_normal(mu.shape).astype(np.float32)
    with torch.no_grad():
        want = m.decode(torch.from_numpy(z)).sample.numpy()
    dec = np.asarray(jax.jit(lambda p, v: wan_vae.decode(cfg, p, v, normalized=False))(params, z.transpose(0, 2, 3, 4, 1)))
    err = np.abs(dec - want.transpose(0, 2, 3, 4, 1)).max()
    assert dec.shape == (1, t, 16, 24, 3) and err <= 1e-4, err
    assert np.abs(want).max() > 0.05


def test_normalisation_round_trip(ref):
    m, cfg, params = ref
    x = np.random.default_rng(0).uniform(-1, 1, (1, 5, 16, 16, 3)).astype(np.float32)
    raw = wan_vae.encode(cfg, params, x, normalize=False)
    norm = wan_vae.encode(cfg, params, x)
    mean, std = wan_vae.latent_stats()
    np.testing.assert_allclose(np.asarray(norm), (np.asarray(raw) - mean) / std, rtol=1e-6, atol=1e-6)


def test_bad_vae_checkpoint_is_clear(ref, tmp_path):
    from safetensors.torch import save_file

    m, _, _ = ref
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    sd.pop("decoder.conv_out.bias")
    sd["encoder.extra.weight"] = torch.zeros(1)
    save_file(sd, tmp_path / "v.safetensors")
    with pytest.raises(ConversionError) as e:
        convert_wan_vae(tmp_path / "v.safetensors", cfg=wan_vae.WanVAEConfig(base_dim=8))
    assert "decoder.conv_out.bias" in str(e.value) and "encoder.extra.weight" in str(e.value)


def test_original_layout_converts_to_same_params(ref, tmp_path):
    """Wan2.1_VAE.pth names, written here from the diffusers keys, give identical params."""
    import re

    m, cfg, params = ref
    sd = {}
    flat = {}  # decoder up_blocks.{i}.{resnets.j|upsamplers.0} -> flat upsamples index
    n = 0
    for i in range(4):
        for j in range(3):
            flat[f"up_blocks.{i}.resnets.{j}"] = n
            n += 1
        if i < 3:
            flat[f"up_blocks.{i}.upsamplers.0"] = n
            n += 1
    res = [("norm1.gamma", "residual.0.gamma"), ("conv1.", "residual.2."), ("norm2.gamma", "residual.3.gamma"),
           ("conv2.", "residual.6."), ("conv_shortcut.", "shortcut.")]
    for k, v in m.state_dict().items():
        o = k
        o = re.sub(r"^quant_conv\.", "conv1.", o)
        o = re.sub(r"^post_quant_conv\.", "conv2.", o)
        o = re.sub(r"^(encoder|decoder)\.conv_in\.", r"\1.conv1.", o)
        o = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.head.0.", o)
        o = re.sub(r"^(encoder|decoder)\.conv_out\.", r"\1.head.2.", o)
        o = re.sub(r"mid_block\.resnets\.0\.", "middle.0.", o)
        o = re.sub(r"mid_block\.attentions\.0\.", "middle.1.", o)
        o = re.sub(r"mid_block\.resnets\.1\.", "middle.2.", o)
        o = o.replace("down_blocks.", "downsamples.")
        if mm := re.match(r"decoder\.(up_blocks\.\d+\.(?:resnets\.\d+|upsamplers\.0))\.(.*)$", o):
            o = f"decoder.upsamples.{flat[mm[1]]}.{mm[2]}"
        if mm := re.match(r"((?:encoder|decoder)\.(?:downsamples\.\d+|middle\.[02]|upsamples\.\d+)\.)(.*)$", o):
            rest = mm[2]
            for a, b in res:
                rest = rest.replace(a, b) if rest.startswith(a) else rest
            o = mm[1] + rest
        sd[o] = v
    assert len(sd) == len(m.state_dict())
    torch.save(sd, tmp_path / "Wan2.1_VAE.pth")
    cfg2, params2 = convert_wan_vae(tmp_path / "Wan2.1_VAE.pth")
    assert cfg2 == cfg
    for (pa, a), (pb, b) in zip(jax.tree_util.tree_leaves_with_path(params),
                                jax.tree_util.tree_leaves_with_path(params2)):
        assert pa == pb
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_published_config_has_194_keys():
    from stp_jax.convert.wan_vae import vae_key_shapes

    shapes = vae_key_shapes(wan_vae.WanVAEConfig())
    assert len(shapes) == 194  # docs/REFERENCE.md §3
    assert round(sum(int(np.prod(s)) for s in shapes.values()) / 1e8, 2) == 1.27


def test_memory_flat_in_frames(ref):
    """The scan keeps activations per chunk: compiled temporaries grow only by the size of
    the input/output buffers, not with the activations of more frames."""
    _, cfg, params = ref

    def temp(t):
        x = jax.ShapeDtypeStruct((1, t, 32, 32, 3), jnp.float32)
        c = jax.jit(lambda p, v: wan_vae.encode(cfg, p, v)).lower(params, x).compile()
        return c.memory_analysis().temp_size_in_bytes

    small, big = temp(9), temp(65)
    io_growth = (65 - 9) * 32 * 32 * 3 * 4 * 3  # a few copies of the extra input frames
    assert big - small <= io_growth, (small, big)


def test_bf16_and_spatially_sharded_encode(ref):
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from stp_jax.parallel.mesh import make_mesh

    _, cfg, params = ref
    x = np.random.default_rng(3).uniform(-1, 1, (2, 5, 16, 32, 3)).astype(np.float32)
    want = np.asarray(wan_vae.encode(cfg, params, x, normalize=False))
    bf = np.asarray(wan_vae.encode(cfg.replace(dtype="bfloat16"), params, x, normalize=False))
    assert np.abs(bf - want).max() / np.abs(want).max() < 5e-2
    mesh = make_mesh({"data": 2, "context": 4})
    with jax.set_mesh(mesh):
        xs = jax.device_put(x, NamedSharding(mesh, P("data", None, None, "context", None)))  # width over 4 devices
        got = jax.jit(lambda p, v: wan_vae.encode(cfg, p, v, normalize=False))(params, xs)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_tiled_encode_decode(ref):
    _, cfg, params = ref
    g = np.random.default_rng(5)
    z = jnp.asarray(g.standard_normal((1, 2, 6, 10, 16)).astype(np.float32) * 0.3)
    full = np.asarray(wan_vae.decode(cfg, params, z))
    # a tile covering the whole frame is the untiled decode
    np.testing.assert_allclose(np.asarray(wan_vae.decode_tiled(cfg, params, z, tile=16, overlap=2)), full, atol=2e-5)
    assert np.asarray(wan_vae.decode_tiled(cfg, params, z, tile=4, overlap=2)).shape == full.shape
    x = jnp.asarray(g.uniform(-1, 1, (1, 5, 48, 80, 3)).astype(np.float32))
    zf = np.asarray(wan_vae.encode(cfg, params, x))
    np.testing.assert_allclose(np.asarray(wan_vae.encode_tiled(cfg, params, x, tile=128, overlap=16)), zf, atol=2e-5)
    assert np.asarray(wan_vae.encode_tiled(cfg, params, x, tile=32, overlap=16)).shape == zf.shape
    with pytest.raises(ValueError, match="multiples of 8"):
        wan_vae.encode_tiled(cfg, params, x, tile=50)


@pytest.mark.parametrize("tile,overlap", [(4, 1), (5, 2), (7, 3), (3, 0)])
def test_tile_blending_is_a_partition_of_unity(tile, overlap):
    """With a local function the blended tiles reproduce the untiled result exactly, whatever
    the tiling, in both directions (8x up as in decode, 8x down as in encode)."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 2, 9, 13, 4)).astype(np.float32))
    up = lambda v: jnp.repeat(jnp.repeat(v, 8, axis=2), 8, axis=3)  # noqa: E731
    got = wan_vae._tiled(up, x, tile, overlap, 1, 8, 2, 4)
    np.testing.assert_allclose(np.asarray(got), np.asarray(up(x)), atol=1e-6)
    big = up(x)  # [1, 2, 72, 104, 4]
    down = lambda v: v.reshape(v.shape[0], v.shape[1], v.shape[2] // 8, 8, v.shape[3] // 8, 8, 4).mean((3, 5))  # noqa: E731
    got = wan_vae._tiled(down, big, tile, overlap, 8, 1, 2, 4)
    np.testing.assert_allclose(np.asarray(got), np.asarray(down(big)), atol=1e-6)


@pytest.mark.parametrize("t", [1, 9])
def test_patch_autoencoder_latent_grid_matches_wan_vae(ref, t):
    from stp_jax.models.vae import PatchAutoencoder

    _, cfg, params = ref
    x = jnp.zeros((1, t, 16, 24, 3))
    zw = jax.eval_shape(lambda v: wan_vae.encode(cfg, params, v), x)
    zp = PatchAutoencoder(spatial=8).encode(x)
    assert zp.shape[:4] == zw.shape[:4]  # same frames and token grid; channels differ by design
    np.testing.assert_array_equal(np.asarray(PatchAutoencoder(spatial=8).decode(zp)), np.asarray(x))
