"""The published pipeline's defaults travel with a converted checkpoint: run.json, the video
preprocessing (docs/REFERENCE.md §6.2 Video) and the VAE tiling, checked against the rules
written out here."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from stp_jax import inference
from stp_jax.convert.checkpoint import is_published_dit, published_run
from stp_jax.data.video_io import read_video, write_video
from stp_jax.models import dit
from stp_jax.models import wan_vae as wv


def _video(path, h, w, frames=2):
    y, x = np.mgrid[0:h, 0:w]
    f = np.stack([np.stack([x * 255 // w, y * 255 // h, (x + y + 40 * t) % 256], -1) for t in range(frames)])
    return write_video(path, f.astype(np.uint8))


def _published_frame(img, out_h=480, out_w=832):
    """§6.2: PIL BILINEAR resize to cover (round), then torchvision CenterCrop (round offsets)."""
    h, w = img.shape[:2]
    s = max(out_w / w, out_h / h)
    rh, rw = round(h * s), round(w * s)
    big = np.asarray(Image.fromarray(img).resize((rw, rh), Image.Resampling.BILINEAR))
    top, left = int(round((rh - out_h) / 2.0)), int(round((rw - out_w) / 2.0))
    return big[top:top + out_h, left:left + out_w]


@pytest.mark.parametrize("h,w", [(1080, 1920), (720, 1280)])
def test_run_json_defaults_give_the_published_model_input(tmp_path, h, w):
    path = _video(tmp_path / "in.mp4", h, w)
    run = json.loads(json.dumps(published_run()))  # as read back from run.json
    assert inference.video_settings(run) == (81, (480, 832), "published")
    with pytest.warns(UserWarning, match="repeating the last frame"):  # a short clip repeats its last frame
        got = inference.load_video(path, run)
    assert got.shape == (81, 480, 832, 3) and got.dtype == np.uint8
    raw = read_video(path)  # decoded frames, no resize
    np.testing.assert_array_equal(got[0], _published_frame(raw[0]))
    np.testing.assert_array_equal(got[1:], np.broadcast_to(_published_frame(raw[1]), (80, 480, 832, 3)))
    # flags still override
    small = inference.load_video(path, run, frames=1, size=(240, 416))
    np.testing.assert_array_equal(small[0], _published_frame(raw[0], 240, 416))


def test_published_sampling_defaults_and_presets():
    run = published_run()
    s = inference.sampling_defaults(run)
    assert (s["steps"], s["cfg_scale"], s["shift"], s["fps"], s["numerics"], s["vae_tiling"]) == (
        50, 5.0, 5.0, 30.0, "reference", "published")
    assert inference.sampling_defaults(run, "demo")["steps"] == 20
    with pytest.raises(ValueError, match="demo, eval"):
        inference.sampling_defaults(run, "fast")
    assert is_published_dit(dit.preset("1.3b")) and is_published_dit(dit.preset("14b"))
    assert not is_published_dit(dit.preset("tiny"))


def test_published_vae_tiles():
    # 480x832 -> 60x104 latents: 3 x 3 tiles of 30 x 52 at strides 15 / 26
    assert wv.published_tile_starts(60, 30, 15) == [0, 15, 30]
    assert wv.published_tile_starts(104, 52, 26) == [0, 26, 52]
    assert wv.published_tile_starts(20, 30, 15) == [0]  # one tile overhanging a small frame
    r = wv.published_ramp(240, False, False, 120)
    np.testing.assert_allclose(r, (np.arange(1, 121) / 120).tolist() + (np.arange(120, 0, -1) / 120).tolist())
    np.testing.assert_array_equal(wv.published_ramp(240, True, True, 120), np.ones(240))
    # a pointwise "decoder" is reproduced exactly by the blend (weights normalised), any shape
    up = lambda z: jnp.repeat(jnp.repeat(z[..., :3] * 2.0, 8, axis=2), 8, axis=3)  # noqa: E731
    z = jnp.asarray(np.random.default_rng(0).standard_normal((1, 2, 36, 60, 4)), jnp.float32)
    out = wv.published_tiled(up, z, (30, 52), (15, 26), 8, 1, jnp.float32)
    np.testing.assert_allclose(np.asarray(out), np.asarray(up(z)), rtol=1e-6, atol=1e-6)
