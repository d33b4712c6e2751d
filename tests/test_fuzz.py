"""Issue 12's fuzz suite: hypothesis over the argument values and the file contents of every
console script, driven in-process through the real entry functions (stp_jax.cli *_main).

Every input either is accepted (exit code 0, or it reaches the expensive work, see below) or
is refused with exit code 2, exactly one ``stp-X: error:`` line, no traceback, a message naming
one of the inputs that were varied, and no new or changed files. Each test is derandomized
(the same inputs on every run) and small enough for CI; ``N`` below is the number of inputs
each command is tried with.

What is stubbed, only past the point where every input has been checked: the generator of
stp-sample (``run_jobs`` returns the source frames, so the outputs are still written), the
training loop of stp-train (from reading the data on), the scoring of stp-eval, the encoding
loop of stp-precompute and the TPU compiler of stp-aot (a fake device list of the topology's
size). Reaching a stub counts as accepted. stp-convert and stp-render run for real.
"""
import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tiny_assets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_assets import TEXT_DIM, snapshot

from stp_jax import cli

N = {"sample": 120, "train": 150, "convert": 120, "eval": 120, "render": 60, "precompute": 120, "aot": 250}
TRIED = {k: 0 for k in N}  # inputs actually tried per command (printed by test_zz_report)
OUTCOMES = {k: {"ok": 0, "accepted": 0, "refused": 0} for k in N}
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


class Accepted(Exception):  # noqa: N818 - raised by a stub: the inputs passed every check
    pass


def _accepted(*a, **k):
    raise Accepted


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny_assets.make(tmp_path_factory.mktemp("fuzz_assets"))


@pytest.fixture(scope="module")
def stubs():
    import stp_jax.aot as aot
    import stp_jax.evaluate as evaluate
    import stp_jax.precompute as precompute
    import stp_jax.sample as sample_lib
    import stp_jax.train as train

    def run_jobs(ck, jobs, *, segments=1, **kw):
        return [np.concatenate([j.source] * segments) for j in jobs]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sample_lib, "run_jobs", run_jobs)
        mp.setattr(train.pl, "prepare", _accepted)
        mp.setattr(evaluate, "retiming_eval", _accepted)
        mp.setattr(precompute, "_write_records", _accepted)
        mp.setattr(aot, "tpu_devices", lambda topo: [None] * topo.chips)
        mp.setattr(aot, "compile_step", _accepted)
        yield


def check(cmd: str, main, argv, root: Path, named) -> str:
    result = _check(cmd, main, argv, root, named)
    OUTCOMES[cmd][result] += 1
    return result


def _check(cmd: str, main, argv, root: Path, named) -> str:
    """Run ``main(argv)``; return "ok" / "accepted" / "refused" after checking the contract.
    ``named``: the inputs that were varied (flags, override keys, file paths); a refusal must
    name at least one of them."""
    TRIED[cmd] += 1
    before = snapshot(root)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except Accepted:
            return "accepted"
    err = err.getvalue()
    assert "Traceback" not in out.getvalue() + err, (argv, err)
    if rc == 0:
        return "ok"
    assert rc == 2, (argv, rc, err)
    assert err.count(": error: ") == 1 and f"stp-{cmd}: error: " in err, (argv, err)
    assert any(n(err) if callable(n) else str(n) in err or repr(str(n)) in err for n in named), (argv, named, err)
    assert snapshot(root) == before, (argv, err, "files were added or changed")
    return "refused"


# ---------------------------------------------------------------- values

def _keys(overrides):
    """How a refusal may name ``a.b=v``: "a.b", or the section and the field ("section 'a': ... b")."""
    out = []
    for o in overrides:
        key = o.partition("=")[0].strip()
        if key:
            section, _, leaf = key.rpartition(".")
            out += [key, lambda err, s=section, f=leaf: f"section {s!r}" in err and f in err]
    return out


def _num_text(ints=(-2, 40)):
    """Strings a user might type for a number: small ints, edge values, floats, garbage."""
    return st.one_of(st.integers(*ints).map(str), st.sampled_from(["0", "-1", "1e9", "nan", "inf", "-inf", "1.5",
                                                                   "", " ", "x", "0x10", "2**31", "9" * 30]),
                     st.floats(allow_nan=True, allow_infinity=True).map(repr))


_SIZE = st.one_of(st.tuples(st.integers(-2, 40), st.integers(-2, 40)).map(lambda t: f"{t[0]}x{t[1]}"),
                  st.sampled_from(["16x16", "0x0", "16", "x", "16x16x3", "ax16", "16X16", "", "-16x-16", "1e2x16"]))
_JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats() | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                     max_leaves=20)
_TIME_NAMES = st.sampled_from(["reverse", "forward", "freeze_mid", "zigzag@3", "zigzag@0", "slowmo2", "slowmo0.5",
                               "speed0", "speed2", "freeze@3", "freeze@99", "ramp@4", "bounce_late", "normal",
                               "zigzag_0_10_0", "nope", "", "0,1,2", "0-8", "8-0", "0-4,4*4", "1*", "a-b", "0,,1",
                               "-1,2", "0.5,1", "1e9"])
_CAMERAS = st.sampled_from(["static", "cam01", "cam10", "cam11", "cam00", "orbit45", "orbit-45", "orbit1e9",
                            "orbitnan", "orbit45_el10", "orbit45_elx", "", "nope", "pan"])


def _pose_rows(draw):
    kind = draw(st.sampled_from(["identity", "random", "singular", "nan", "short", "strings", "nested"]))
    t = draw(st.sampled_from([1, 5, 9, 12]))
    if kind == "identity":
        return np.tile(np.eye(4), (t, 1, 1)).tolist()
    if kind == "random":
        return np.random.default_rng(draw(st.integers(0, 99))).normal(size=(t, 4, 4)).tolist()
    if kind == "singular":
        return np.zeros((t, 4, 4)).tolist()
    if kind == "nan":
        p = np.tile(np.eye(4), (t, 1, 1))
        p[0, 0, 3] = np.nan
        return p.tolist()
    if kind == "short":
        return [[1, 0, 0]] * t
    if kind == "strings":
        return [["a"] * 16] * t
    return draw(_JSON)


@st.composite
def camera_file(draw):
    """(suffix, text or bytes) of a camera trajectory file."""
    kind = draw(st.sampled_from(["trajectory", "recammaster", "json", "garbage", "npy"]))
    if kind == "trajectory":
        d = {"poses": _pose_rows(draw)}
        if draw(st.booleans()):
            d["convention"] = draw(st.sampled_from(["opencv_c2w", "blender_c2w", "opencv_w2c", "x", 5, None]))
        return ".json", json.dumps(d)
    if kind == "recammaster":
        frames = draw(st.integers(0, 10))
        value = draw(st.one_of(st.just("[1 0 0 0] [0 1 0 0] [0 0 1 0] [0 0 0 1]"), st.sampled_from(
            ["[0 0 0 0] [0 0 0 0] [0 0 0 0] [0 0 0 1]", "[1 0 0]", "[a b c]", "", "[nan 0 0 0] [0 1 0 0] [0 0 1 0] "
             "[0 0 0 1]"]), _JSON))
        return ".json", json.dumps({f"frame{i}": {"cam01": value} for i in range(frames)})
    if kind == "json":
        return ".json", json.dumps(draw(_JSON))
    if kind == "npy":
        buf = io.BytesIO()
        np.save(buf, np.asarray(_pose_rows(draw), dtype=object) if draw(st.booleans()) else
                np.random.default_rng(0).normal(size=(9, 4, 4)) * draw(st.sampled_from([0.0, 1.0, np.nan])),
                allow_pickle=True)
        return ".npy", buf.getvalue()
    return draw(st.sampled_from([".json", ".npy", ".txt"])), draw(st.binary(max_size=40))


@st.composite
def time_file(draw):
    kind = draw(st.sampled_from(["list", "dict", "json", "text"]))
    if kind == "list":
        return ".json", json.dumps(draw(st.lists(st.one_of(st.integers(-2, 12), st.floats(), st.booleans(),
                                                           st.text(max_size=3)), max_size=12)))
    if kind == "dict":
        return ".json", json.dumps({"schedule": draw(_JSON)})
    if kind == "json":
        return ".json", json.dumps(draw(_JSON))
    return draw(st.sampled_from([".txt", ".json"])), draw(st.one_of(_TIME_NAMES, st.text(max_size=12)))


def _write(d: Path, name: str, suffix: str, content) -> Path:
    p = d / f"{name}{suffix}"
    p.write_bytes(content) if isinstance(content, bytes) else p.write_text(content)
    return p


@contextlib.contextmanager
def _workspace():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


# ---------------------------------------------------------------- stp-sample

def _or_valid(*valid, bad=None):
    """Half the time one of ``valid``, else anything a user might type."""
    return st.sampled_from(valid) | (_num_text() if bad is None else bad)


_SAMPLE_FLAGS = {"--steps": _or_valid("1", "2"), "--shift": _or_valid("1.5", "5"), "--cfg": _or_valid("1", "3.5"),
                 "--seed": _or_valid("0", "7"), "--frames": _or_valid("5", "9"),
                 "--size": _or_valid("16x16", "8x8", bad=_SIZE), "--segments": _or_valid("1", "2"),
                 "--batch": _or_valid("1", "4"), "--fps": _or_valid("8", "30"),
                 "--solver": st.sampled_from(["euler", "x", ""]), "--preset": st.sampled_from(["demo", "eval", ""])}


@st.composite
def sample_request(draw):
    flags = draw(st.dictionaries(st.sampled_from(sorted(_SAMPLE_FLAGS)), st.just(None), max_size=3))
    flags = {k: draw(_SAMPLE_FLAGS[k]) for k in flags}
    camera = draw(st.sampled_from(["static", "cam01", "orbit45"]) | _CAMERAS | camera_file())
    time = draw(st.sampled_from(["reverse", "freeze_mid", "0-8"]) | _TIME_NAMES | time_file())
    jobs = draw(st.one_of(st.none(), st.lists(st.dictionaries(
        st.sampled_from(["name", "video", "camera", "time", "seed", "steps", "frames", "shift", "size", "caption",
                         "text_embedding", "cfg"]),
        st.one_of(_JSON, _TIME_NAMES, _CAMERAS), max_size=5), max_size=3)))
    emb = draw(st.sampled_from([None, "ok", "nan", "int", "shape", "empty", "garbage"]))
    return flags, camera, time, jobs, emb


@settings(max_examples=N["sample"], **SETTINGS)
@given(req=sample_request())
def test_fuzz_sample(assets, stubs, req):
    flags, camera, time, jobs, emb = req
    with _workspace() as d:
        named = list(flags)
        if not isinstance(camera, str):
            camera = _write(d, "camera", *camera)
        if not isinstance(time, str):
            time = _write(d, "time", *time)
        argv = ["--checkpoint", assets / "model", "--out", d / "out"]
        if jobs is None:
            argv += ["--video", assets / "src.mp4", "--camera", camera, "--time", time]
            named += ["--camera", "--time", camera, time]
        else:
            lines = []
            for j in jobs:  # the valid keys filled in now and then, so that some jobs pass
                lines.append(json.dumps({"video": str(assets / "src.mp4"), "camera": str(camera), "time": str(time),
                                         **j} if len(j) % 2 else j))
            argv += ["--jobs", _write(d, "jobs", ".jsonl", "\n".join(lines))]
            named += ["jobs", "job ", "camera", "time", "video", camera, time]
        if emb is not None:
            f = d / "emb.npy"
            arr = {"ok": np.ones((4, TEXT_DIM), np.float32), "nan": np.full((4, TEXT_DIM), np.nan, np.float32),
                   "int": np.ones((4, TEXT_DIM), np.int32), "shape": np.ones((4, TEXT_DIM + 1), np.float32),
                   "empty": np.ones((0, TEXT_DIM), np.float32)}.get(emb)
            np.save(f, arr) if arr is not None else f.write_bytes(b"\x93NUMPY garbage")
            argv += ["--text-embedding", f]
            named += [f]
        for k, v in flags.items():
            argv += [f"{k}={v}"]
        check("sample", cli.sample_main, argv, d, named)


# ---------------------------------------------------------------- stp-train and the config overrides

_TRAIN_KEYS = ["total_steps", "keep_checkpoints", "checkpoint_every", "log_every", "seed", "ema_decay",
               "time_limit_minutes", "optim.lr", "optim.warmup", "optim.b1", "optim.clip", "optim.accumulate",
               "optim.weight_decay", "model.dim", "model.num_heads", "model.num_layers", "model.eps",
               "model.patch_size", "model.mode", "model.attention", "model.dtype", "data.num_frames",
               "data.height", "data.width", "data.global_batch", "data.num_cameras", "data.num_scenes",
               "data.fixed_camera_pairs", "data.source", "mesh.fsdp", "mesh.data", "flow.shift", "flow.prediction",
               "autoencoder.spatial", "autoencoder.kind", "text.length", "eval.cases", "sample.steps",
               "nope", "model.nope", "nope.x", "model", ""]
_VALUES = st.one_of(_num_text(), st.sampled_from(["True", "False", "none", "None", "'x'", "[1, 2]", "(1, 2, 2)",
                                                  "{'a': 1}", "(0, 2, 2)", "()", "wan", "splash", "bfloat16",
                                                  "latents", "velocity", "x0", "('reverse',)", "('nope',)"]))
_GOOD_OVERRIDES = st.lists(st.sampled_from(["total_steps=3", "optim.lr=3e-4", "seed=7", "model.num_layers=1",
                                             "data.global_batch=2", "keep_checkpoints=1", "flow.shift=2.5"]),
                           max_size=2)
_OVERRIDES = _GOOD_OVERRIDES | st.lists(
    st.tuples(st.sampled_from(_TRAIN_KEYS), _VALUES).map(lambda kv: f"{kv[0]}={kv[1]}")
    | st.sampled_from(["x", "=", "a==b", "total_steps"]), min_size=1, max_size=3)
_CONFIGS = st.just("tiny_camxtime:smoke") | st.sampled_from(["tiny_camxtime", "tiny_camxtime:nope", "nope",
                                                             "nope.py", "tiny_camxtime:smoke,smoke", ""])


@settings(max_examples=N["train"], **SETTINGS)
@given(config=_CONFIGS, overrides=_OVERRIDES)
def test_fuzz_train(stubs, config, overrides):
    with _workspace() as d:
        argv = ["--config", config, "--workdir", d / "wd"]
        for o in overrides:
            argv += ["--set", o]
        named = ["config", "--set", *_keys(overrides)]
        if check("train", cli.train_main, argv, d, named) == "refused":
            assert not (d / "wd").exists()


# ---------------------------------------------------------------- stp-precompute


@settings(max_examples=N["precompute"], **SETTINGS)
@given(config=_CONFIGS, overrides=_OVERRIDES, epochs=st.just("1") | _num_text((-1, 2)),
       batch=st.just("2") | _num_text((-1, 9)), out=st.sampled_from(["new", "existing", "stale_output", "file", "under_file"]),
       overwrite=st.booleans())
def test_fuzz_precompute(stubs, config, overrides, epochs, batch, out, overwrite):
    with _workspace() as d:
        target = {"under_file": d / "f" / "out", "file": d / "f"}.get(out, d / "out")
        (d / "f").write_text("a file")
        if out == "existing":
            (d / "out").mkdir()
            (d / "out" / "precious").write_text("x")
        elif out == "stale_output":
            (d / "out").mkdir()
            (d / "out" / "meta.json").write_text("{}")
        argv = ["--config", config, "--out", target, "--epochs", epochs, "--batch", batch]
        argv += [a for o in overrides for a in ("--set", o)] + (["--overwrite"] if overwrite else [])
        named = ["config", "--set", "--epochs", "--batch", "--out", target, *_keys(overrides)]
        check("precompute", cli.precompute_main, argv, d, named)
        if out == "existing":
            assert (d / "out" / "precious").exists()


# ---------------------------------------------------------------- stp-eval

_CASES = st.lists(st.sampled_from(["reverse", "freeze_mid", "zigzag", "moving:reverse", "moving:zigzag",
                                   "cam:reverse_path", "cam:last_view", "cam:nope", "fixed:forward", "x:reverse",
                                   "nope", "zigzag@0", "freeze@99", "slowmo2", " ", ""]), max_size=4).map(",".join)


@settings(max_examples=N["eval"], **SETTINGS)
@given(flags=st.fixed_dictionaries({}, optional={"--scenes": _num_text(), "--steps": _num_text(),
                                                 "--shift": _num_text(), "--seed": _num_text(), "--cases": _CASES,
                                                 "--checkpoint": st.sampled_from(["missing", "file", "empty"])}),
       out=st.sampled_from(["new", "under_file", None]))
def test_fuzz_eval(assets, stubs, flags, out):
    with _workspace() as d:
        (d / "f").write_text("a file")
        (d / "empty").mkdir()
        ck = {"missing": d / "missing", "file": d / "f", "empty": d / "empty"}.get(flags.pop("--checkpoint", None),
                                                                               assets / "model")
        argv = ["--checkpoint", ck]
        if out is not None:
            argv += ["--out", d / "e" if out == "new" else d / "f" / "e"]
        argv += [f"{k}={v}" for k, v in flags.items()]
        check("eval", cli.eval_main, argv, d if out is not None else assets, [*flags, "--out", ck])


# ---------------------------------------------------------------- stp-convert


@st.composite
def state_dict_file(draw, tensors):
    """A .safetensors file of the tiny model's tensors with some of them damaged, or junk."""
    from safetensors.numpy import save

    kind = draw(st.sampled_from(["tensors", "tensors", "tensors", "junk"]))
    if kind == "junk":
        return draw(st.sampled_from([".safetensors", ".pth", ".ckpt", ".bin"])), draw(st.binary(max_size=64))
    sd = dict(tensors)
    for _ in range(draw(st.integers(0, 2))):
        k = draw(st.sampled_from(sorted(sd)))
        how = draw(st.sampled_from(["int8", "bool", "float16", "float64", "nan", "inf", "drop", "reshape", "extra",
                                    "huge"]))
        if how in ("int8", "bool", "float16", "float64"):
            sd[k] = sd[k].astype(how)
        elif how in ("nan", "inf"):
            sd[k] = sd[k].copy()
            sd[k].flat[0] = np.nan if how == "nan" else np.inf
        elif how == "drop":
            sd.pop(k, None)
        elif how == "reshape":
            sd[k] = sd[k].reshape(-1)[:-1] if sd[k].size > 1 else np.zeros((2, 2), np.float32)
        elif how == "extra":
            sd["extra.weight"] = np.zeros(3, np.float32)
        else:
            sd[k] = np.full(sd[k].shape, 1e39, np.float64)
    return ".safetensors", save(sd)


@pytest.fixture(scope="module")
def tensors(assets):
    from safetensors.numpy import load_file

    return _Tensors(load_file(assets / "model.safetensors"))


class _Tensors(dict):
    def __repr__(self):  # hypothesis prints the arguments of a failing example
        return f"<the tiny model's {len(self)} tensors>"


@settings(max_examples=N["convert"], **SETTINGS)
@given(data=st.data(), flags=st.fixed_dictionaries({}, optional={
    "--num-heads": _num_text((-1, 5)), "--param-dtype": st.sampled_from(["float32", "bfloat16", "int8"]),
    "--format": st.sampled_from(["auto", "wan", "umt5", "wan_vae", "diffusers", "nope"]),
    "--sampling-defaults": st.sampled_from(["auto", "none", "published", "x"])}),
       export=st.booleans(), out=st.sampled_from(["new", "existing", "under_file"]))
def test_fuzz_convert(assets, tensors, data, flags, export, out):
    with _workspace() as d:
        (d / "f").write_text("a file")
        target = {"new": d / "out", "existing": d / "f", "under_file": d / "f" / "out"}[out]
        if export:
            src = d / "model"
            shutil.copytree(assets / "model", src)
            damage = data.draw(st.sampled_from(["none", "config", "params", "no_params"]))
            if damage == "config":
                (src / "config.json").write_text(json.dumps(data.draw(_JSON)))
            elif damage == "params":
                f = max((p for p in (src / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
                f.write_bytes(f.read_bytes()[:data.draw(st.integers(0, 200))])
            elif damage == "no_params":
                shutil.rmtree(src / "params")
            argv = [src, "--export", "--out", target.with_suffix(".safetensors") if out == "new" else target]
        else:
            src = _write(d, "weights", *data.draw(state_dict_file(tensors)))
            argv = [src, "--out", target] + [f"{k}={v}" for k, v in flags.items()]
            if "--num-heads" not in flags:
                argv += ["--num-heads", "2"]
        check("convert", cli.convert_main, argv, d, [src, target, *flags, "--out"])


# ---------------------------------------------------------------- stp-render


@settings(max_examples=N["render"], **SETTINGS)
@given(flags=st.fixed_dictionaries({}, optional={
    "--frames": st.one_of(st.sampled_from(["1", "5", "9"]), _num_text((-2, 10))),
    "--cameras": st.one_of(st.sampled_from(["1", "3"]), _num_text((-2, 6))),
    "--size": st.one_of(st.sampled_from(["8x8", "16x12"]), _SIZE), "--fps": _num_text(),
    "--seed": _num_text()}), out=st.sampled_from(["new", "existing", "under_file"]), overwrite=st.booleans())
def test_fuzz_render(flags, out, overwrite):
    with _workspace() as d:
        (d / "f").write_text("a file")
        (d / "old").mkdir()
        (d / "old" / "keep").write_text("x")
        target = {"new": d / "out", "existing": d / "old", "under_file": d / "f" / "out"}[out]
        flags.setdefault("--frames", "5")
        flags.setdefault("--cameras", "3")
        flags.setdefault("--size", "8x8")
        argv = ["--out", target] + [f"{k}={v}" for k, v in flags.items()] + (["--overwrite"] if overwrite else [])
        result = check("render", cli.render_main, argv, d, [*flags, "--out", target])
        if result == "ok":
            assert target.is_dir() and not list(d.glob("*.partial*"))


# ---------------------------------------------------------------- stp-aot

_TOPOLOGIES = st.one_of(
    st.tuples(st.sampled_from(["v4", "v5p", "v5e", "v6e", "v7", "V5P", ""]), st.sampled_from(["-", ":", "_"]),
              st.lists(st.integers(0, 70), min_size=1, max_size=4),
              st.sampled_from(["", "x0", "x2", "x-1"])).map(lambda t: f"{t[0]}{t[1]}{'x'.join(map(str, t[2]))}{t[3]}"),
    st.sampled_from(["v5p-8", "v5p-8x0", "v5p-0", "v6e-16", "v5p:2x2x2", "v5p:0x2", "v5e-8", "", "8", "tpu"]),
    st.text(max_size=10))
_MESHES = st.one_of(st.none(), st.sampled_from(["fsdp=4", "fsdp=-1", "data=2,fsdp=-1", "fsdp=0", "fsdp=-2",
                                                "data=-1,fsdp=-1", "nope=4", "fsdp=3", "fsdp", "fsdp=x", "=4", ""]))


@settings(max_examples=N["aot"], **SETTINGS)
@given(topology=_TOPOLOGIES, mesh=_MESHES, overrides=_OVERRIDES)
def test_fuzz_aot(stubs, topology, mesh, overrides):
    with _workspace() as d:
        argv = ["--config", "tiny_camxtime:smoke", f"--topology={topology}"]
        argv += [] if mesh is None else [f"--mesh={mesh}"]
        argv += [a for o in overrides for a in ("--set", o)]
        check("aot", cli.aot_main, argv, d, ["--topology", "--mesh", topology, "--set", "config", *_keys(overrides)])


def test_zz_report():
    """How many inputs each command was tried with (the issue's closing note quotes them)."""
    print("\nfuzz inputs per command:", json.dumps(TRIED), "\noutcomes:", json.dumps(OUTCOMES))
    ran = [k for k in N if TRIED[k]]  # (a -k selection runs some of them)
    assert all(TRIED[k] >= N[k] for k in ran), TRIED
    for k in ran:  # the inputs reach both sides of every command's checks
        assert OUTCOMES[k]["refused"] and OUTCOMES[k]["ok"] + OUTCOMES[k]["accepted"], (k, OUTCOMES[k])
