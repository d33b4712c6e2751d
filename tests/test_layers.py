"""The one-way layer contract (.importlinter, checked by import-linter in tools/test.sh) holds, and
fails on a deliberately added upward import (also inside a function)."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint(tree: Path):
    exe = Path(sys.executable).parent / "lint-imports"
    return subprocess.run([str(exe), "--no-cache", "--config", str(ROOT / ".importlinter")], cwd=tree,
                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=300)


def test_contract_holds_and_bites(tmp_path):
    shutil.copytree(ROOT / "stp_jax", tmp_path / "stp_jax", ignore=shutil.ignore_patterns("__pycache__"))
    ok = _lint(tmp_path)
    assert ok.returncode == 0 and "1 kept, 0 broken" in ok.stdout, ok.stdout[-3000:]
    layers = tmp_path / "stp_jax" / "models" / "layers.py"
    layers.write_text(layers.read_text() + "\n\ndef _upward():\n    from stp_jax import train  # noqa\n")
    bad = _lint(tmp_path)
    assert bad.returncode != 0 and "stp_jax.models.layers -> stp_jax.train" in bad.stdout, bad.stdout[-3000:]
