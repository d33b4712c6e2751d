"""stp-eval's procedural evaluation end to end on a small SpaceTimePilot model folder (random
weights: the scores of the model row mean nothing, the truth and baseline rows are exact), and
tools/layout_ceiling.py --checkpoint, which reads a model's outputs the same way."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from stp_jax import metrics
from stp_jax.controls import camera as cam_lib

T, H, CAMS = 9, 16, 5  # frames, pixels, cameras of the grid (unequal: an axis mix-up fails)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import jax

    from stp_jax.convert.dit import abstract_params
    from stp_jax.convert.store import save_pretrained
    from stp_jax.models.dit import DiTConfig

    d = tmp_path_factory.mktemp("evaluate")
    cfg = DiTConfig(mode="spacetimepilot", dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_channels=12,
                    out_channels=12, text_dim=32, freq_dim=32, time_groups=8, rope_frames="time", cam_heads=1,
                    attention="xla")
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: (0.02 * rng.standard_normal(a.shape)).astype(np.float32), abstract_params(cfg))
    run = {"autoencoder": {"kind": "patch", "spatial": 2, "path": "", "time_factor": 1},
           "data": {"num_frames": T, "height": H, "width": H, "num_cameras": CAMS},
           "sample": {"steps": 2, "shift": 3.0, "prediction": "x0"}}
    save_pretrained(d / "model", cfg, params, meta={"source": "tests"}, extra_files={"run.json": json.dumps(run)})
    return d / "model"


def _tool(name: str):
    """tools/<name>.py as a module."""
    path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_stp_eval_scores_truth_and_baselines_exactly(model_dir, tmp_path):
    from stp_jax.cli import eval_main

    out = tmp_path / "eval"
    assert eval_main(["--checkpoint", str(model_dir), "--out", str(out), "--scenes", "1", "--no-lpips",
                      "--cases", "still:reverse,reverse", "--model-set", "attention=blockwise"]) == 0
    res = json.loads((out / "eval.json").read_text())
    for case in ("still:reverse", "reverse"):
        rows = res[case]
        assert set(rows) == {"model", "truth", "source", "preshuffled", "camera_matched", "first_frame", "temporal_mean"}
        assert rows["truth"]["time_err"] == 0 and rows["truth"]["cam_err"] == 0
        assert np.isfinite(rows["model"]["psnr"]) and rows["model"]["psnr"] < rows["truth"]["psnr"]
        assert (out / f"{case.replace(':', '_')}.png").is_file() and (out / f"{case.replace(':', '_')}.mp4").is_file()
    # at one still camera the source reordered by the schedule is the truth
    assert res["still:reverse"]["preshuffled"] == res["still:reverse"]["truth"]
    assert res["reverse"]["first_frame"]["time_err"] == pytest.approx(np.arange(T).mean())  # observed 0, asked 8..0
    assert "still:reverse" in (out / "eval.md").read_text()
    assert "; attention=blockwise" in (out / "eval.md").read_text().splitlines()[0]  # how the model ran
    kept = json.loads((out / "scenes.json").read_text())  # the per-scene scores stp-eval --compare pairs
    assert kept["seed"] == 0 and len(kept["scenes"]) == 1
    assert kept["per_scene"]["reverse"]["model"]["psnr"] == [res["reverse"]["model"]["psnr"]]
    # a model against itself: every difference 0
    assert eval_main(["--compare", str(out), str(out), "--out", str(tmp_path / "cmp" / "same.md")]) == 0
    same = (tmp_path / "cmp" / "same.md").read_text()
    assert f"| reverse | {res['reverse']['model']['psnr']:.2f} [+0.00 ± nan]" in same and same.rstrip().endswith("level |")


def test_layout_ceiling_reads_a_models_bands(model_dir):
    tool = _tool("layout_ceiling")
    rows = tool.spectrum(model_dir, "still:reverse", scenes=1)
    assert [r[0] for r in rows] == [0, 16, 32]  # 2x2 patches of 12-channel latents: 48-value tokens
    assert sum(r[1] for r in rows) == pytest.approx(1.0)  # the bands split the truth's variance
    assert rows[0][5] == pytest.approx(1.0) and rows[-1][5] is None and rows[-1][6] == 47  # head rank <= dim 32
    # at a still camera the first frame repeated has the scene's background: most of the leading band
    assert rows[0][4] > 0.5
    # random weights reproduce nothing of any band
    assert all(np.isfinite(r[2]) and r[2] < 0.2 for r in rows)


def test_copy_ceiling_oracle():
    """tools/copy_ceiling.py's oracle: a target made of source tiles comes back exactly (at the tile
    grid, and at any offset for tiles moved off it), as from copy_loss's soft targets at a low
    temperature; a tile no source frame holds gets its nearest."""
    tool = _tool("copy_ceiling")
    rng = np.random.default_rng(1)
    src = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    truth = src[::-1].copy()  # reversed: every tile is in the source
    np.testing.assert_array_equal(tool.oracle_copy(src, truth, 4), truth)
    np.testing.assert_array_equal(tool.target_copy(src, truth, 4, 0.003), truth)  # copy_loss's targets: sharp here
    assert np.abs(tool.target_copy(src, truth, 4, 30.0).astype(int) - truth).max() > 20  # a hot one mixes
    shifted = np.roll(src, 1, axis=2)  # tiles one pixel off the grid
    shifted[:, :, 0] = src[:, :, 0]
    off = tool.oracle_copy(src, shifted, 4)
    assert np.abs(off[:, :, 4:].astype(int) - shifted[:, :, 4:]).max() > 0  # the grid has no such tile
    np.testing.assert_array_equal(tool.oracle_copy(src, shifted, 4, any_offset=True)[:, :, 4:], shifted[:, :, 4:])
    dark = np.zeros_like(src[:1])
    best = tool.oracle_copy(src, dark, 8)  # the darkest whole frame
    np.testing.assert_array_equal(best[0], src[np.argmin((src.astype(float) ** 2).sum((1, 2, 3)))])


def test_copy_ceiling_ray_copy():
    """tools/copy_ceiling.py's copy along target rays: of the source points on a tile's ray it takes
    the frame of the requested time; with the target camera one tile footprint sideways, the tile
    one over."""
    tool = _tool("copy_ceiling")
    rng = np.random.default_rng(3)
    t, size, block, z = 3, 16, 4, 5.0
    src = rng.integers(0, 256, (t, size, size, 3), dtype=np.uint8)
    still = np.tile(np.eye(4), (t, 1, 1))
    pts = tool.tile_points(still, np.full((t, size, size), z), block)
    times = np.arange(t)[::-1]
    np.testing.assert_array_equal(tool.ray_copy(src, pts, *tool.tile_rays(still, size, block), times, block, 0.1),
                                  src[::-1])
    moved = still.copy()
    moved[:, 0, 3] = block * z / (0.5 * size / np.tan(np.deg2rad(tool.cx.FOV_DEG) / 2))
    out = tool.ray_copy(src, pts, *tool.tile_rays(moved, size, block), np.arange(t), block, 0.1)
    np.testing.assert_array_equal(out[:, :, :-block], src[:, :, block:])


def test_copy_ceiling_geometry():
    """tools/copy_ceiling.py's copy by geometry: a tile takes the source tile whose centre's world point
    is nearest: one tile over when the target camera moves one tile footprint sideways; from the
    allowed frame only when frames are restricted."""
    tool = _tool("copy_ceiling")
    rng = np.random.default_rng(2)
    t, size, block, z = 3, 16, 4, 5.0
    src = rng.integers(0, 256, (t, size, size, 3), dtype=np.uint8)
    still = np.tile(np.eye(4), (t, 1, 1))
    depth = np.full((t, size, size), z)
    pts = tool.tile_points(still, depth, block)
    assert pts.shape == (t * (size // block) ** 2, 3)
    allowed = np.eye(t, dtype=bool)[::-1]  # target frame i from source frame t-1-i
    np.testing.assert_array_equal(tool.geometric_copy(src, pts, pts, block, allowed), src[::-1])
    focal = 0.5 * size / np.tan(np.deg2rad(tool.cx.FOV_DEG) / 2)
    moved = still.copy()
    moved[:, 0, 3] = block * z / focal  # one tile's footprint at depth z, to the right
    out = tool.geometric_copy(src, pts, tool.tile_points(moved, depth, block), block, np.eye(t, dtype=bool))
    np.testing.assert_array_equal(out[:, :, :-block], src[:, :, block:])




def test_composite_probe_depth_sensitivity():
    """tools/composite_probe.py's depth_sensitivity against the pinhole's closed form: a camera moved sideways by
    baseline b sees a point at depth z move by focal * b * (1/z - 1/(z e^s)) pixels when its depth grows by log
    step s; frames without moving pixels are nan, and a target camera at the source's pose sees no shift."""
    tool = _tool("composite_probe")
    n, s, size, fov, z, base = 1, 3, 24, 50.0, 4.0, 0.5
    src = np.tile(np.eye(4)[:3], (n, s, 1, 1))
    tgt = src.copy()
    tgt[:, 1, 0, 3] = base  # target frame 1 filmed from half a unit to the right
    moving = np.zeros((n, s, size, size), bool)
    moving[:, 0, 10:14, 10:14] = True
    moving[:, 1, 5:7, 5:7] = True  # frame 2 has none
    j = np.array([[0, 0, 2]])  # target frames 0 and 1 take source frame 0's moving pixels
    shift = tool.depth_sensitivity(src, tgt, j, np.full((n, s, size, size), z), moving, fov, step=0.2)
    focal = 0.5 * size / np.tan(np.radians(fov) / 2)
    np.testing.assert_allclose(shift[0, :2], [0.0, focal * base * (1 / z - 1 / (z * np.exp(0.2)))], atol=1e-9)
    assert np.isnan(shift[0, 2])
    # a target camera beside the source, turned to look at the point on the source's axis (odd size: one pixel
    # centre on the axis): that point lands on the target's centre, the farther one an angle atan(b/z) -
    # atan(b/(z e^s)) off it; a target camera behind the point sees nothing
    size = 25
    on_axis = np.zeros((n, 1, size, size), bool)
    on_axis[:, 0, size // 2, size // 2] = True
    tgt = np.stack([cam_lib.look_at((base, 0, 0), (0, 0, z))[:3], cam_lib.look_at((0, 0, 2 * z), (0, 0, 3 * z))[:3]])
    shift = tool.depth_sensitivity(src[:, :1], tgt[None], np.zeros((1, 2), int), np.full((n, 1, size, size), z),
                                   on_axis, fov, step=0.2)
    focal = 0.5 * size / np.tan(np.radians(fov) / 2)
    angle = np.arctan(base / z) - np.arctan(base / (z * np.exp(0.2)))
    np.testing.assert_allclose(shift[0, 0], focal * np.tan(angle), rtol=1e-9)
    assert np.isnan(shift[0, 1])


def test_exact_frames_own_cells_and_measures():
    """tools/exact_frames.py: a target frame is a source frame's own cell where its camera is the camera that filmed
    the source frame of its time (17 frames, 17 cameras on the source's diagonal); without those frames, per-frame
    PSNR is the mean over the others, and the pooled PSNR is that of the clips' mean squared error."""
    tool = _tool("exact_frames")
    t = 17
    assert tool.own_cells("moving:reverse", t, t).nonzero()[0].tolist() == [8]  # camera 8 at time 8
    assert tool.own_cells("reverse", t, t).nonzero()[0].tolist() == [16]  # camera 0 at time 0
    assert tool.own_cells("cam:last_view", t, t).nonzero()[0].tolist() == [16]
    assert not tool.own_cells("freeze_mid", t, t).any()  # camera 0 at time 8: filmed from camera 8
    assert tool.own_cells("still:reverse", t, t).all()  # one camera: every frame is some source frame
    truth = np.zeros((2, 3, 4, 4, 3), np.uint8)
    clip = truth.copy()
    clip[:, 1] = 10  # frame 1 off by 10 grey levels, frames 0 and 2 exact
    per_frame, without, pooled = tool.measures(clip, truth, np.array([True, False, False]))
    cap = metrics.psnr(truth[:, :1], truth[:, :1]).mean()
    np.testing.assert_allclose(per_frame, (2 * cap + 10 * np.log10(255 ** 2 / 100)) / 3, rtol=1e-9)
    np.testing.assert_allclose(without, (cap + 10 * np.log10(255 ** 2 / 100)) / 2, rtol=1e-9)
    np.testing.assert_allclose(pooled, 10 * np.log10(255 ** 2 / (100 / 3)), rtol=1e-9)


def test_copy_ceiling_gated_units():
    """The two layers at the copy's units: a tile comes from the frame of the requested time where
    either layer shows something moving there, from the camera-matched frame elsewhere."""
    tool = _tool("copy_ceiling")
    rng = np.random.default_rng(5)
    t, size, block, z = 3, 8, 4, 5.0
    src = rng.integers(0, 256, (t, size, size, 3), dtype=np.uint8)
    moving = np.zeros((t, size, size), bool)
    moving[2, 1, 1] = True  # frame 2's top-left tile shows a moving pixel
    still = np.tile(np.eye(4), (t, 1, 1))
    pts = tool.tile_points(still, np.full((t, size, size), z), block)
    out = tool.gated_units(src, moving, pts, *tool.tile_rays(still, size, block), np.zeros(t, int),
                           np.arange(t)[::-1], block)
    want = np.repeat(src[:1], t, 0)
    want[0, :block, :block] = src[2, :block, :block]
    np.testing.assert_array_equal(out, want)


def test_paired_margins_and_standard_errors():
    """stp-eval's summary: per-scene values -> means, standard errors over scenes, and the model's margin over the
    best baseline of each metric (its own per metric) paired per scene (the scenes' shared difficulty drops out: a
    margin far smaller than either row's spread is still clear); lower-is-better metrics count a lower model value as
    a positive margin; "clearly" is a margin above twice its standard error on each of PSNR, SSIM and LPIPS."""
    from stp_jax import evaluate

    hard = np.array([18.0, 24.0, 30.0, 21.0])  # scene difficulty: spreads every row's PSNR by ~5 dB
    rows = {b: {"psnr": hard - 3.0, "time_err": np.array([6.0, 7, 8, 6])} for b in evaluate.BASELINES}
    gap = np.array([0.2, 0.35, 0.05, 0.2])  # the model's PSNR over camera_matched: 0.2 ± 0.061 (3.3 SE)
    rows["camera_matched"] = {"psnr": hard - gap, "time_err": np.array([6.0, 7, 8, 6])}
    rows["preshuffled"] = {"psnr": hard - 3.0, "time_err": np.array([2.0, 3, 5, 2])}  # the best time: another baseline
    rows["model"] = {"psnr": hard, "time_err": np.array([1.0, 2, 3, 2])}
    rows["truth"] = {"psnr": np.full(4, 58.9), "time_err": np.zeros(4)}
    for name, r in rows.items():  # SSIM 0.1 better than every baseline; LPIPS 0.05 lower (better); no camera error
        r.update(ssim=np.full(4, 0.6 if name == "model" else 1.0 if name == "truth" else 0.5),
                 lpips=np.full(4, 0.1 if name == "model" else 0.0 if name == "truth" else 0.15), cam_err=np.zeros(4))
    res = evaluate.summarise({"reverse": rows})["reverse"]
    m = res["model"]
    assert m["psnr"] == pytest.approx(hard.mean()) and m["psnr_se"] == pytest.approx(hard.std(ddof=1) / 2)
    assert m["psnr_margin"] == pytest.approx(0.2) and m["psnr_margin_se"] == pytest.approx(gap.std(ddof=1) / 2)
    assert m["time_err_margin"] == pytest.approx(1.0)  # against preshuffled's 3.0 (not camera_matched's 6.75)
    assert m["time_err_margin_se"] == pytest.approx(np.std([1, 1, 2, 0], ddof=1) / 2)
    assert m["lpips_margin"] == pytest.approx(0.05) and m["ssim_margin"] == pytest.approx(0.1)
    assert "psnr_margin" not in res["camera_matched"] and res["truth"]["time_err_se"] == 0
    assert evaluate.beats_clearly({"reverse": res}, "reverse")  # 3.3 SE on PSNR, SSIM and LPIPS without spread
    table = evaluate.markdown_table({"reverse": res})
    assert "[+0.20 ± 0.06]" in table and table.rstrip().endswith("| yes | yes |")
    assert "on PSNR, SSIM and LPIPS" in table
    # SSIM ahead on average but by 1.1 SE: beats all on the means, not clearly
    rows["model"]["ssim"] = 0.5 + np.array([0.03, -0.01, 0.02, 0.0])
    res2 = evaluate.summarise({"reverse": rows})
    assert evaluate.beats_baselines(res2, "reverse") and not evaluate.beats_clearly(res2, "reverse")
    # without LPIPS the note names the two metrics it judged
    no_lpips = {k: {m: v for m, v in r.items() if m != "lpips"} for k, r in rows.items()}
    assert "on PSNR and SSIM" in evaluate.markdown_table(evaluate.summarise({"reverse": no_lpips}))
    # one scene: means only, no margins, no 'clearly' column
    one = evaluate.summarise({"reverse": {k: {m: v[:1] for m, v in r.items()} for k, r in rows.items()}})
    assert set(one["reverse"]["model"]) == {"psnr", "time_err", "ssim", "lpips", "cam_err"}
    assert evaluate.beats_clearly(one, "reverse") is None
    assert "clearly" not in evaluate.markdown_table(one)


def test_compare_two_models_paired_per_scene(tmp_path, capsys):
    """stp-eval --compare: model B against model A on the scenes both scored (matched by scene id, in any order),
    the per-scene difference signed so that positive means B is better, its standard error, bold beyond two, and a
    verdict; what is left out is said; bad or mismatched files are one clear error."""
    from stp_jax import evaluate
    from stp_jax.cli import eval_main

    hard = {1: 18.0, 2: 24.0, 3: 30.0, 4: 21.0, 5: 40.0}  # each scene's difficulty, shared by both models
    gain = {1: 0.1, 2: 0.6, 3: 0.2, 4: 0.5, 5: 9.0}  # B's PSNR over A's per scene (scene 5: B's alone)
    data = {"num_frames": 17, "num_cameras": 17, "height": 24, "width": 24}

    def scenes(ids, model_b: bool, seed=0):
        psnr = [hard[i] + (gain[i] if model_b else 0.0) for i in ids]
        lpips = [0.1 - (0.02 if model_b and i < 3 else 0.0) for i in ids]  # B lower (better) on two scenes
        time = [2.0 + (1.0 if model_b else 0.0) for i in ids]  # B one frame worse everywhere
        row = {"psnr": psnr, "ssim": [0.5] * len(ids), "lpips": lpips, "time_err": time}
        return {"scenes": ids, "seed": seed, "data": data, "sampler": {"steps": 2},
                "per_scene": {"reverse": {"model": row}, "only_a": {"model": dict(row)}}}

    a, b = scenes([1, 2, 3, 4], False), scenes([4, 3, 5, 2, 1], True)
    b["per_scene"].pop("only_a")
    cmp = evaluate.compare(a, b)
    assert list(cmp) == ["reverse"]  # the cases both scored
    p = cmp["reverse"]["psnr"]
    assert p["n"] == 4 and p["diff"] == pytest.approx(0.35) and p["b"] - p["a"] == pytest.approx(0.35)
    assert p["se"] == pytest.approx(np.std([0.1, 0.6, 0.2, 0.5], ddof=1) / 2)  # paired: the difficulty drops out
    assert cmp["reverse"]["lpips"]["diff"] == pytest.approx(0.01)  # lower is better: positive for B
    assert cmp["reverse"]["time_err"]["diff"] == pytest.approx(-1.0) and cmp["reverse"]["time_err"]["se"] == 0
    assert "cam_err" not in cmp["reverse"]
    table = evaluate.compare_table(cmp, "runs/a", "runs/b", notes=evaluate.compare_notes(a, b))
    # PSNR +0.35 at 2.9 SE bold; LPIPS +0.01 at 1.7 SE plain; the verdict ignores time_err (bold against B)
    assert "| 23.60 **[+0.35 ± 0.12]** |" in table and "| 0.090 [+0.010 ± 0.006] |" in table
    assert "| 3.00 **[-1.00 ± 0.00]** |" in table and table.rstrip().endswith("| better |")
    assert "same 4 scenes" in table and "scenes only A has: 0, only B has: 1" in table
    assert "cases only A has: 1, only B has: 0" in table and "not by noise" not in table
    b["per_scene"]["reverse"]["model"]["psnr"] = [hard[i] - 0.3 + 0.1 * (i % 2) for i in b["scenes"]]
    assert evaluate.compare_table(evaluate.compare(a, b)).rstrip().endswith("| worse |")  # -0.25 ± 0.03
    b["per_scene"]["reverse"]["model"]["ssim"] = [0.6] * 5  # SSIM clearly better, PSNR clearly worse: mixed
    assert evaluate.compare_table(evaluate.compare(a, b)).rstrip().endswith("| mixed |")
    b["per_scene"]["reverse"]["model"].pop("lpips")  # scored in one only: left out, and said
    assert "reverse: lpips left out" in " ".join(evaluate.compare_notes(a, b))
    with pytest.raises(ValueError, match="share no scene"):
        evaluate.compare(a, {**a, "scenes": [7, 8, 9, 10]})
    with pytest.raises(ValueError, match="other clips"):  # the same ids on clips of another shape
        evaluate.compare_notes(a, {**a, "data": {**data, "height": 48}})
    assert "does not record its clips' shape" in evaluate.compare_notes({k: v for k, v in a.items() if k != "data"}, a)[0]
    assert "other settings" in evaluate.compare_notes(a, {**a, "sampler": {"steps": 4}})[0]
    # through the command: folders with scenes.json
    for name, d in (("a", a), ("b", scenes([4, 3, 5, 2, 1], True, seed=1))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "scenes.json").write_text(json.dumps(d))
    assert eval_main(["--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c.md")]) == 0
    written = (tmp_path / "c.md").read_text()
    assert "not by noise" in written and "| reverse | 23.60 **[+0.35 ± 0.12]**" in written
    assert written.strip() == capsys.readouterr().out.strip()
    # bad input: one line naming the file and what was expected, exit 2, no traceback
    bad = {"none": None, "not json": "{", "no model row": {**a, "per_scene": {"reverse": {"truth": {}}}},
           "short": {**a, "per_scene": {"reverse": {"model": {"psnr": [1.0]}}}},
           "a scalar": {**a, "per_scene": {"reverse": {"model": {"psnr": 20.0}}}},
           "strings": {**a, "per_scene": {"reverse": {"model": {"psnr": ["a"] * 4}}}},
           "ids": {**a, "scenes": [[1], [2], [3], [4]]}, "repeated ids": {**a, "scenes": [1, 1, 2, 3]},
           "no metric": {**a, "per_scene": {"reverse": {"model": {"time_within1": [1.0] * 4}}}}}
    for i, (what, d) in enumerate(bad.items()):
        f = tmp_path / f"bad{i}.json"
        if d is not None:
            f.write_text(d if isinstance(d, str) else json.dumps(d))
        assert eval_main(["--compare", str(tmp_path / "a"), str(f)]) == 2, what
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("stp-eval: error:") and "Traceback" not in err[0], (what, err)
    assert eval_main(["--compare", str(tmp_path / "a"), str(tmp_path / "a"), "--out", str(tmp_path)]) == 2
    assert "the table's file" in capsys.readouterr().err
    assert eval_main(["--compare", str(tmp_path / "a"), str(tmp_path / "a"), "--score", str(tmp_path)]) == 2
    assert "drop --score" in capsys.readouterr().err
