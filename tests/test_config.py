"""Configs: shipped files at the repository root, typed overrides that fail at the command line,
combinable variants, one source of defaults, and an installed (non-editable) package that still
finds its configs."""
import subprocess
import sys
from pathlib import Path

import pytest

from stp_jax import config as configs

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_configs_live_at_the_top_level():
    assert configs.shipped_dir().resolve() == (ROOT / "configs").resolve()
    assert set(configs.shipped()) >= {"tiny_camxtime", "stp_1_3b", "stp_14b", "recammaster_1_3b"}
    for name in configs.shipped():
        configs.load(name)  # every shipped config builds and validates


def test_overrides_are_typed():
    c = configs.load("tiny_camxtime:smoke", ["optim.lr=3e-4", "mesh.fsdp=2", "eval.cases=reverse,moving:reverse",
                                             "model.attention='auto'", "data.warp_probs=[('forward', 1.0)]",
                                             "model.patch_size=(1,1,1)", "ema_decay=0.5", "optim.warmup=7"])
    assert c.optim.lr == 3e-4 and c.mesh.fsdp == 2 and c.eval.cases == ("reverse", "moving:reverse")
    assert c.model.attention == "auto" and c.model.patch_size == (1, 1, 1) and c.ema_decay == 0.5
    assert isinstance(c.optim.warmup, int) and isinstance(c.optim.lr, float)
    bad = {"optim.lr=abc": "optim.lr=abc: expected a float", "data.global_batch=1.5": "expected an int",
           "flow.shift=nan": "finite float", "model.remat=nope": "remat 'nope'", "optim.lr=-1": "optim.lr must be > 0",
           "total_steps=-5": "total_steps must be >= 1", "keep_checkpoints=0": "keep_checkpoints must be >= 1",
           "optim.lrr=1": "no key 'lrr'", "optim=1": "is a section", "eval.cases=sideways": "eval.cases",
           "data.num_frames=16": "1 + 4k", "lr": "key.sub=value", "nosuch.lr=1": "no section 'nosuch'",
           "model.dim=100": "divisible"}
    for item, msg in bad.items():
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace("+", r"\+")):
            configs.load("tiny_camxtime", [item])
    c = configs.load("tiny_camxtime", ["tpu_compiler_options.xla_tpu_some_flag=true"])  # free-form section
    assert c.tpu_compiler_options.xla_tpu_some_flag is True


def test_variants_combine():
    a = configs.load("stp_1_3b:720p,all")
    b = configs.load("stp_1_3b:res=720p,train=all")
    assert a.to_dict() == b.to_dict() and a.data.height == 720 and a.optim.trainable == "all"
    for spec, msg in (("stp_1_3b:nope", "unknown variant 'nope'; known: res=720p, train=all"),
                      ("stp_1_3b:720p,res=720p", "pick one"), ("stp_1_3b:train=720p", "unknown variant"),
                      ("no_such_config", "shipped"), ("missing.py", "does not exist")):
        with pytest.raises(ValueError, match=msg):
            configs.load(spec)


def test_sections_come_from_their_dataclasses():
    """Each section's keys and defaults are its dataclass's (one source of defaults)."""
    import dataclasses

    c = configs.base("x")
    for name, cls in configs.SECTIONS.items():
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        if name == "model":
            continue  # from the DiT preset
        want = {k: v for k, v in fields.items() if k not in getattr(cls, "RUNTIME", ())}
        assert dict(c[name]) == want, name


def test_bad_override_is_one_line_at_the_command_line(tmp_path):
    p = subprocess.run([str(Path(sys.executable).parent / "stp-train"), "--config", "tiny_camxtime", "--set",
                        "optim.lr=abc", "--workdir", str(tmp_path / "w")], capture_output=True, text=True, timeout=120)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and "WARNING" not in ln and "E0000" not in ln]
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert any("optim.lr" in ln and "float" in ln for ln in lines), p.stderr
    assert not (tmp_path / "w").exists()


def test_an_installed_package_finds_its_configs(tmp_path):
    """A plain (non-editable) install: configs/ is installed as stp_jax.configs."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(tmp_path / "site"), str(ROOT)], check=True, capture_output=True, timeout=300)
    code = ("import stp_jax.config as c, sys; assert 'site' in c.__file__, c.__file__; "
            "print(c.shipped_dir(), c.load('tiny_camxtime').model.dim)")
    p = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(tmp_path / "site"), "JAX_PLATFORMS": "cpu",
                                                          "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert str(tmp_path / "site") in p.stdout and p.stdout.strip().endswith("128")
