"""stp-train end to end: resume after SIGKILL is bit-identical, SIGTERM saves first, a NaN
stops the run with the last good checkpoint intact, config loading and overrides."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from jax_cache import compile_cache_env

from stp_jax import config as configs

# with a curriculum switch at step 5, so resuming before and after it is checked to be exact too
SMOKE = ["--config", "tiny_camxtime:smoke", "--set", "total_steps=16", "--set", "checkpoint_every=2",
         "--set", "log_every=1", "--set", "data.fixed_camera_steps=5"]


def _env(cache):
    """One CPU device in the children, whatever the test process simulates; one test's runs share
    the compilation cache folder ``cache``."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["JAX_PLATFORMS"] = "cpu"
    return {**env, **compile_cache_env(cache)}


def _script(name):
    """The installed console script (what a user runs), next to this interpreter."""
    return str(Path(sys.executable).parent / name)


def _train(workdir, *extra, wait=True):
    cmd = [_script("stp-train"), *SMOKE, "--workdir", str(workdir), *extra]
    p = subprocess.Popen(cmd, env=_env(Path(workdir).parent / "jax_cache"), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    if wait:
        out, _ = p.communicate(timeout=300)
        return p.returncode, out
    return p


def _steps_logged(workdir) -> int:
    f = Path(workdir) / "metrics.jsonl"
    if not f.exists():
        return 0
    return max([json.loads(line)["step"] for line in f.read_text().splitlines() if line.strip()] or [0])


def _finalized(workdir) -> list[int]:
    d = Path(workdir) / "checkpoints"
    return sorted(int(c.name) for c in d.iterdir() if c.name.isdigit()) if d.exists() else []


def _params(workdir, step):
    import orbax.checkpoint as ocp

    r = ocp.StandardCheckpointer().restore(Path(workdir).absolute() / "checkpoints" / str(step) / "state")
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(r["params"])]


@pytest.mark.slow
def test_sigkill_resume_is_bit_identical_and_sigterm_saves(tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    rc, out = _train(ref)
    assert rc == 0, out
    kill_at = int(np.random.default_rng().integers(3, 7))
    p = _train(killed, wait=False)
    deadline = time.time() + 240
    # kill once a checkpoint is finalized (an async save still in flight is not one) and the run has
    # gone past it, so the restart has to resume mid-run
    while (not _finalized(killed) or _steps_logged(killed) < kill_at) and p.poll() is None \
            and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert _steps_logged(killed) < 16, "the run finished before it could be killed"
    rc, out = _train(killed)
    assert rc == 0 and "resumed from" in out, out
    for a, b in zip(_params(ref, 16), _params(killed, 16)):
        np.testing.assert_array_equal(a, b)

    # SIGTERM: the run saves at the step it reached, exits 3, and a restart finishes the job
    term = tmp_path / "term"
    p = _train(term, "--set", "checkpoint_every=100", wait=False)
    while _steps_logged(term) < 3 and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 3 and "preempted" in out, out
    saved = _finalized(term)
    assert saved and saved[-1] >= 3 and not (term / "model").exists()


@pytest.mark.slow
def test_nan_stops_with_last_good_checkpoint(tmp_path):
    from stp_jax.train import NonFiniteError, train_and_evaluate

    cfg = configs.load("tiny_camxtime:smoke", ["total_steps=8", "checkpoint_every=2", "debug.nan_at_step=3",
                                                "data.global_batch=8"])
    with pytest.raises(NonFiniteError, match=r"step 3: loss=nan.*last good checkpoint is step 2"):
        train_and_evaluate(cfg, tmp_path)
    steps = sorted(int(d.name) for d in (tmp_path / "checkpoints").iterdir() if d.name.isdigit())
    assert steps == [2]
    assert all(np.isfinite(x).all() for x in _params(tmp_path, 2))
    assert not (tmp_path / "model").exists()


def test_precompute_latents_round_trip_and_train(tmp_path):
    import dataclasses

    from stp_jax import inference
    from stp_jax.data import latents
    from stp_jax.data import pipeline as pl
    from stp_jax.precompute import precompute
    from stp_jax.train import train_and_evaluate

    def data_config(c):
        return pl.DataConfig.from_config(c)

    cfg = configs.load("tiny_camxtime:smoke", ["data.num_scenes=4"])
    out = precompute(cfg, tmp_path / "lat", epochs=2, batch=4)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["count"] == 8 and meta["latent_shape"] == [17, 6, 6, 48]  # 24x24, per-frame latents
    d = dataclasses.replace(data_config(cfg), source="latents", latents_dir=str(out), shuffle=False, global_batch=4,
                            num_epochs=1)
    stored = next(iter(pl.make_loader(d)))
    assert sorted(stored["seed"].tolist()) == [0, 1, 2, 3]
    frames = next(iter(pl.make_loader(dataclasses.replace(data_config(cfg), shuffle=False, global_batch=4))))
    ae = inference.build_autoencoder(inference.AutoencoderConfig(**cfg.autoencoder))
    back = np.asarray(inference.to_uint8(ae.decode(stored["tgt_latents"].astype(np.float32))))
    np.testing.assert_array_equal(back, frames["tgt_frames"])  # fp16 latents still round to the same pixels
    np.testing.assert_array_equal(stored["tgt_time"], frames["tgt_time"])
    # the renderer's depth and masks of the default's composite travel with the latents (the sky capped)
    assert meta["composite_aux"] and stored["src_depth"].dtype == np.float32
    np.testing.assert_array_equal(stored["src_moving"], frames["src_moving"])
    np.testing.assert_array_equal(stored["src_depth"], np.minimum(frames["src_depth"], latents.AUX_DEPTH_CAP))
    bare = precompute(configs.load("tiny_camxtime:smoke", ["data.num_scenes=2", "data.composite_aux=false",
                                                           "flow.composite_loss=0"]), tmp_path / "bare", batch=2)
    with pytest.raises(ValueError, match="no renderer depth and masks"):
        pl.make_loader(dataclasses.replace(data_config(cfg), source="latents", latents_dir=str(bare)))
    cfg2 = configs.load("tiny_camxtime:smoke", ["data.source='latents'", f"data.latents_dir='{out}'",
                                                 "data.global_batch=8", "total_steps=2"])
    assert train_and_evaluate(cfg2, tmp_path / "run")["stopped"] == "done"
