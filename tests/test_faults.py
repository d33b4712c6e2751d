"""Issue 12: each reproducible failure of a careless or hostile user, and each fault (damaged
checkpoints, blocked outputs, corrupt weights), ends in one clear error, exit code 2 from the
CLI, nothing lost and nothing half-written. tests/test_fuzz.py drives the same paths at random."""
import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import tiny_assets
from tiny_assets import TEXT_DIM, snapshot

from stp_jax import checkpointing as ckpt
from stp_jax.cli import _run, aot_main, convert_main, eval_main, precompute_main, render_main, sample_main, train_main


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny_assets.make(tmp_path_factory.mktemp("faults"))


def _fails(capsys, main, argv, *named, root=None):
    """main(argv) exits 2 with one 'stp-X: error:' naming each of ``named``, no traceback, and
    leaves ``root`` (when given) exactly as it was."""
    before = snapshot(root) if root is not None else None
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert err.startswith("stp-") and err.count(": error: ") == 1 and "Traceback" not in out + err, err
    for n in named:
        assert str(n) in err, (n, err)
    if root is not None:
        assert snapshot(root) == before, "files were added or changed"
    return err


def _sample(assets, out, *extra, video=True):
    base = ["--checkpoint", str(assets / "model"), "--out", str(out)]
    if video:
        base += ["--video", str(assets / "src.mp4"), "--camera", "static", "--time", "reverse"]
    return base + list(extra)


# ---------------------------------------------------------------- silent wrong results (issue item 5)


@pytest.mark.parametrize("flag,value", [("--shift", "nan"), ("--shift=-1", None), ("--shift", "0"), ("--shift", "inf"),
                                        ("--steps", "0"), ("--frames", "0"), ("--cfg", "nan"), ("--batch", "0"),
                                        ("--size", "0x0"), ("--segments", "0"), ("--cache", "fast"),
                                        ("--cache-threshold", "nan"), ("--cache-threshold=-1", None)])
def test_sample_rejects_values_that_were_replaced_or_accepted(assets, tmp_path, capsys, flag, value):
    """--shift nan / -1 gave an all-black video with exit 0; --steps 0, --frames 0, --shift 0
    were silently replaced by the defaults; --batch 0 said 'range() arg 3 must not be zero'."""
    extra = [flag] if value is None else [flag, value]
    _fails(capsys, sample_main, _sample(assets, tmp_path / "o", *extra), flag.split("=")[0], root=tmp_path)


def test_sample_rejects_a_non_finite_text_embedding(assets, tmp_path, capsys):
    emb = tmp_path / "emb.npy"
    np.save(emb, np.full((4, TEXT_DIM), np.nan, np.float32))
    err = _fails(capsys, sample_main, _sample(assets, tmp_path / "o", "--text-embedding", str(emb)), emb,
                 root=tmp_path)
    assert "NaN or Inf" in err
    np.save(emb, np.ones((4, TEXT_DIM), np.int64))
    _fails(capsys, sample_main, _sample(assets, tmp_path / "o", "--text-embedding", str(emb)), "float", root=tmp_path)


def test_eval_rejects_bad_numbers_before_loading(assets, tmp_path, capsys):
    for extra, named in ((["--shift", "inf"], "--shift"), (["--shift", "nan"], "--shift"), (["--steps", "0"], "--steps"),
                         (["--scenes", "0"], "--scenes"), (["--cases", ""], "--cases"), (["--seed", "-2"], "--seed")):
        _fails(capsys, eval_main, ["--checkpoint", str(assets / "model"), "--out", str(tmp_path / "e"), *extra],
               named, root=tmp_path)


@pytest.mark.parametrize("override,named", [("total_steps=-5", "total_steps"), ("keep_checkpoints=0", "keep_checkpoints"),
                                            ("optim.lr=nan", "optim.lr"), ("model.dim=0", "dim 0")])
def test_train_rejects_bad_overrides_and_writes_nothing(tmp_path, capsys, override, named):
    """total_steps=-5 exported an untrained model with exit 0, keep_checkpoints=0 kept none,
    model.dim=0 was a ZeroDivisionError traceback after creating the workdir."""
    wd = tmp_path / "wd"
    _fails(capsys, train_main, ["--config", "tiny_camxtime:smoke", "--workdir", str(wd), "--set", override], named,
           root=tmp_path)
    assert not wd.exists()


@pytest.mark.parametrize("override,named", [("mesh.fsdp=3", "mesh.fsdp=3"), ("data.num_cameras=" + "9" * 30,
                                                                                  "data.num_cameras"),
                                            ("autoencoder.spatial=5", "autoencoder.spatial"),
                                            ("autoencoder.spatial=1", "autoencoder.spatial"),
                                            ("model.dtype=0", "dtype '0'"), ("model.dtype=2**31", "dtype '2**31'")])
def test_train_config_errors_name_the_key(tmp_path, capsys, override, named):
    """Found by tests/test_fuzz.py: messages that named no config key (mesh shape, latent
    shape), and an OverflowError traceback for a huge data.num_cameras."""
    _fails(capsys, train_main, ["--config", "tiny_camxtime:smoke", "--workdir", str(tmp_path / "wd"), "--set",
                                override], named, root=tmp_path)


def test_a_caption_without_an_encoder_names_the_job(assets, tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"name": "j1", "video": str(assets / "src.mp4"), "camera": "static", "time": "reverse",
                                "caption": "a cat"}))
    _fails(capsys, sample_main, _sample(assets, tmp_path / "o", "--jobs", str(jobs), video=False), "job 'j1'",
           "--text-encoder", root=tmp_path)


# ---------------------------------------------------------------- converter


def test_converter_names_a_head_count_that_does_not_fit(assets, tmp_path, capsys):
    _fails(capsys, convert_main, [str(assets / "model.safetensors"), "--out", str(tmp_path / "o"), "--num-heads", "3"],
           "--num-heads 3", root=tmp_path)


def _tensors(assets) -> dict:
    from safetensors.numpy import load_file

    return load_file(assets / "model.safetensors")


@pytest.mark.parametrize("kind", ["int8", "bool", "nan", "inf", "bf16_overflow"])
def test_converter_rejects_non_float_and_non_finite_weights(assets, tmp_path, capsys, kind):
    from safetensors.numpy import save_file

    sd = _tensors(assets)
    keys = sorted(sd)[:2]
    for k in keys:
        if kind in ("int8", "bool"):
            sd[k] = np.ones(sd[k].shape, kind)
        elif kind == "bf16_overflow":  # finite in the file, Inf once cast to --param-dtype bfloat16
            sd[k] = np.full(sd[k].shape, 1e39, np.float64)
        else:
            sd[k] = sd[k].copy()
            sd[k].flat[0] = np.nan if kind == "nan" else -np.inf
    src = tmp_path / "bad.safetensors"
    save_file(sd, src)
    extra = ["--num-heads", "2"] + (["--param-dtype", "bfloat16"] if kind == "bf16_overflow" else [])
    err = _fails(capsys, convert_main, [str(src), "--out", str(tmp_path / "out"), *extra], src, *keys, root=tmp_path)
    assert ("non-float" if kind in ("int8", "bool") else "NaN or Inf") in err


def test_corrupt_orbax_params_are_a_clear_error(assets, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(assets / "model", model)
    for f in (model / "params").rglob("*"):
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(f.read_bytes()[:100])
    _fails(capsys, sample_main, _sample(assets, tmp_path / "o", "--checkpoint", str(model)),
           model, "params/", root=tmp_path)
    _fails(capsys, convert_main, [str(model), "--export", "--out", str(tmp_path / "x.safetensors")], model,
           root=tmp_path)
    (model / "config.json").write_text("{not json")
    _fails(capsys, sample_main, _sample(assets, tmp_path / "o", "--checkpoint", str(model)), "config.json",
           root=tmp_path)


def test_failed_conversion_write_leaves_no_partial(assets, tmp_path, capsys, monkeypatch):
    import orbax.checkpoint as ocp

    def broken(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", broken)
    _fails(capsys, convert_main, [str(assets / "model.safetensors"), "--out", str(tmp_path / "out"), "--num-heads",
                                  "2"], "No space", root=tmp_path)


# ---------------------------------------------------------------- outputs (issue items 1-3, 7)


def test_sample_blocked_or_read_only_out_fails_before_generating(assets, tmp_path, capsys, monkeypatch):
    import stp_jax.sample as sample_lib

    def never(*a, **k):
        raise AssertionError("generated before checking --out")

    monkeypatch.setattr(sample_lib, "run_jobs", never)
    (tmp_path / "file").write_text("x")
    _fails(capsys, sample_main, _sample(assets, tmp_path / "file" / "o"), "file/o", "not a folder", root=tmp_path)
    ro = Path("/proc/stp_jax_test_out")  # a read-only file system, even for root
    if not os.access("/proc", os.W_OK) or not _can_create_in("/proc"):
        _fails(capsys, sample_main, _sample(assets, ro), ro, "cannot write")


def _can_create_in(d) -> bool:
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=d):
            return True
    except OSError:
        return False


def test_sample_overwrite_never_deletes_its_inputs(assets, tmp_path, capsys):
    work = tmp_path / "work"
    shutil.copytree(assets / "model", work / "model")
    shutil.copy(assets / "src.mp4", work / "src.mp4")
    _fails(capsys, sample_main, ["--checkpoint", str(work / "model"), "--video", str(work / "src.mp4"), "--camera",
                                 "static", "--time", "reverse", "--out", str(work), "--overwrite"],
           "holds the input", root=tmp_path)


def test_sample_overwrite_never_deletes_the_video_it_reads(assets, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(assets / "src.mp4", out / "src.mp4")
    _fails(capsys, sample_main, ["--checkpoint", str(assets / "model"), "--video", str(out / "src.mp4"), "--camera",
                                 "static", "--time", "reverse", "--out", str(out), "--overwrite"],
           "holds the input", out / "src.mp4", root=tmp_path)


@pytest.mark.parametrize("fault", ["OSError", "KeyboardInterrupt"])
def test_sample_failing_while_writing_leaves_nothing(assets, tmp_path, capsys, monkeypatch, fault):
    """Disk full (or Ctrl-C) while the outputs are written: no OUT, no OUT.partial."""
    import stp_jax.sample as sample_lib

    monkeypatch.setattr(sample_lib, "run_jobs", lambda ck, jobs, **k: [j.source for j in jobs])

    def write_some(out, job, frames, **k):
        out.mkdir(parents=True, exist_ok=True)
        (out / "video.mp4").write_bytes(b"half a video")
        raise OSError(28, "No space left on device") if fault == "OSError" else KeyboardInterrupt

    monkeypatch.setattr(sample_lib, "write_outputs", write_some)
    if fault == "OSError":
        _fails(capsys, sample_main, _sample(assets, tmp_path / "o"), "I/O error", "No space", root=tmp_path)
    else:
        assert sample_main(_sample(assets, tmp_path / "o")) == 3
        assert capsys.readouterr().err.endswith("\nstp-sample: interrupted\n")
        assert list(tmp_path.iterdir()) == []


def test_precompute_failing_midway_leaves_nothing(tmp_path, capsys, monkeypatch):
    import stp_jax.precompute as precompute

    def half(tmp, *a, **k):
        (tmp / "latents-00000.array_record").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(precompute, "_write_records", half)
    _fails(capsys, precompute_main, ["--config", "tiny_camxtime:smoke", "--out", str(tmp_path / "lat")], "No space",
           root=tmp_path)


# ---------------------------------------------------------------- malformed inputs (issue item 7)


@pytest.mark.parametrize("flag,name,content,expected", [
    ("--time", "t.json", '"abc"', "expected a JSON list"),  # was: TypeError: len() of unsized object
    ("--time", "t.json", '{"schedule": {"a": 1}}', "expected a JSON list"),
    ("--time", "t.json", "[true, false]", "bool"),
    ("--time", "t.json", "[[1, 2], [3]]", "1-D list"),
    ("--camera", "c.json", '{"frame0": {"cam01": 5}}', "expected a string of 16 numbers"),  # was: TypeError
    ("--camera", "c.json", json.dumps({"poses": np.zeros((9, 4, 4)).tolist(), "convention": "opencv_w2c"}),
     "not invertible"),  # was: "Singular matrix", naming nothing
    ("--camera", "c.npy", None, "not invertible"),
])
def test_malformed_camera_and_time_files_are_named(assets, tmp_path, capsys, flag, name, content, expected):
    f = tmp_path / name
    np.save(f, np.zeros((9, 4, 4))) if content is None else f.write_text(content)
    extra = {"--time": ["--camera", "static", "--time", str(f)], "--camera": ["--camera", str(f), "--time", "reverse"]}
    err = _fails(capsys, sample_main, _sample(assets, tmp_path / "o", *extra[flag], video=False) + ["--video", str(
        assets / "src.mp4")], f, expected, root=tmp_path)
    assert "Singular matrix" not in err


@pytest.mark.parametrize("argv,named,not_named", [
    (["--size", "0x0"], "--size", "--cameras"), (["--cameras", "0"], "--cameras", "--size"),
    (["--fps", "nan"], "--fps", "--size"), (["--fps", "0.1"], "--fps", "--size"), (["--frames", "4"], "--frames", "--size"),
    (["--seed", "-1"], "--seed", "--size")])
def test_render_names_the_bad_argument(tmp_path, capsys, argv, named, not_named):
    err = _fails(capsys, render_main, ["--out", str(tmp_path / "r"), *argv], named, root=tmp_path)
    assert not_named not in err


@pytest.mark.parametrize("topology,expected", [("v5p-8x0", "slice count"), ("v5p-0", "TensorCore count"),
                                               ("v5p:0x2", "chip counts >= 1"), ("v5e-3", "powers of two")])
def test_aot_topology_errors_name_the_topology(tmp_path, capsys, topology, expected):
    _fails(capsys, aot_main, ["--config", "tiny_camxtime:smoke", "--topology", topology, "--json",
                              str(tmp_path / "r.json")], topology, expected, root=tmp_path)


@pytest.mark.parametrize("mesh", ["fsdp=0", "fsdp=-2", "nope=4", "data=-1,fsdp=-1"])
def test_aot_mesh_errors_name_the_mesh(tmp_path, capsys, monkeypatch, mesh):
    import stp_jax.aot as aot

    monkeypatch.setattr(aot, "tpu_devices", lambda topo: [None] * topo.chips)  # no libtpu needed to check --mesh
    _fails(capsys, aot_main, ["--config", "tiny_camxtime:smoke", "--topology", "v5p-8", "--mesh", mesh], "--mesh",
           mesh, root=tmp_path)


# ---------------------------------------------------------------- README's own command (issue item 6)


def test_eval_default_cases_are_valid_and_bad_cases_name_cases(assets, tmp_path, capsys, monkeypatch):
    """README's `stp-eval --checkpoint DIR` failed on its own default --cases (zigzag)."""
    import stp_jax.evaluate as evaluate

    seen = {}

    class Reached(Exception):  # noqa: N818
        pass

    def scored(*a, cases, **k):
        seen["cases"] = cases
        raise Reached

    monkeypatch.setattr(evaluate, "retiming_eval", scored)
    with pytest.raises(Reached):
        eval_main(["--checkpoint", str(assets / "model"), "--out", str(tmp_path / "e")])
    assert "zigzag" in seen["cases"] and seen["cases"] == evaluate.DEFAULT_CASES
    _fails(capsys, eval_main, ["--checkpoint", str(assets / "model"), "--out", str(tmp_path / "e"), "--cases",
                               "reverse,zigzag@0"], "--cases", "zigzag@0", root=tmp_path)


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "a/b", "", 5])
def test_job_names_are_names_not_paths(assets, tmp_path, capsys, name):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"name": name, "video": str(assets / "src.mp4"), "camera": "static",
                                "time": "reverse"}))
    _fails(capsys, sample_main, _sample(assets, tmp_path / "o", "--jobs", str(jobs), video=False), "name",
           root=tmp_path)


def test_precompute_never_replaces_a_folder_it_did_not_write(tmp_path, capsys):
    wd = tmp_path / "workdir"
    (wd / "checkpoints" / "2").mkdir(parents=True)
    (wd / "checkpoints" / "2" / "state").write_bytes(b"precious" * 1000)
    for extra in ([], ["--overwrite"]):
        _fails(capsys, precompute_main, ["--config", "tiny_camxtime:smoke", "--out", str(wd), *extra], wd,
               root=tmp_path)


# ---------------------------------------------------------------- checkpoints (issue item 4)


def _iterator():
    import grain

    return iter(grain.MapDataset.range(100).to_iter_dataset())


def _saved(workdir, steps=(2, 4)):
    import ml_collections

    m = ckpt.manager(workdir, 5)
    it = _iterator()
    for s in steps:
        next(it)
        ckpt.save(m, s, {"w": np.random.default_rng(s).random(50_000)}, it, ml_collections.ConfigDict({"a": 1}))
        ckpt.wait(m)
    m.close()
    return workdir / "checkpoints"


def _damage(step_dir: Path, kind: str):
    if kind == "truncated":  # the largest array file cut short
        f = max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        f.write_bytes(f.read_bytes()[:100])
    elif kind == "emptied":
        shutil.rmtree(step_dir)
        step_dir.mkdir()
    elif kind == "no_metadata":
        (step_dir / "state" / "_METADATA").unlink()


@pytest.mark.parametrize("kind", ["truncated", "emptied", "no_metadata"])
def test_restore_falls_back_to_the_newest_intact_checkpoint(tmp_path, kind):
    import jax

    d = _saved(tmp_path)
    _damage(d / "4", kind)
    lines = []
    step, state = ckpt.restore_latest(ckpt.manager(tmp_path, 5), {"w": jax.ShapeDtypeStruct((50_000,), np.float64)},
                                      _iterator(), log=lines.append)
    assert step == 2
    np.testing.assert_array_equal(state["w"], np.random.default_rng(2).random(50_000))
    assert len(lines) == 1 and "checkpoint 4" in lines[0] and "trying an older one" in lines[0], lines


def test_no_restorable_checkpoint_is_an_error_and_config_json_is_kept(tmp_path, capsys):
    d = _saved(tmp_path)
    for s in ("2", "4"):
        _damage(d / s, "no_metadata")
    (tmp_path / "config.json").write_text("the previous run's config")
    err = _fails(capsys, train_main, ["--config", "tiny_camxtime:smoke", "--workdir", str(tmp_path)],
                 "no checkpoint", "[4, 2]", root=tmp_path)
    assert "move the damaged checkpoints away" in err


def test_unwritable_checkpoint_dir_fails_at_once(tmp_path, capsys):
    (tmp_path / "checkpoints").write_text("a file where the checkpoint folder should be")
    t0 = time.time()
    with pytest.raises(ckpt.CheckpointError, match="checkpoints.*not writable"):
        ckpt.manager(tmp_path, 3)
    assert time.time() - t0 < 10


def test_sigint_asks_the_loop_to_save_and_ctrl_c_elsewhere_is_one_line(capsys):
    from stp_jax.train import _stop_signals

    stop = {"why": None}
    with _stop_signals(stop):
        os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: no KeyboardInterrupt, the loop saves and stops
        time.sleep(0.1)
    assert stop["why"] == "interrupted"

    def interrupted():
        raise KeyboardInterrupt

    assert _run("stp-x", interrupted) == 3
    err = capsys.readouterr().err
    assert err == "stp-x: interrupted\n"
