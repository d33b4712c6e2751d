"""Golden sharding: the PartitionSpec of every parameter and optimizer-state leaf of each
shipped config on a few meshes, kept in tests/golden/*.json so any sharding change shows up
in review. Regenerate on purpose with: STP_UPDATE_GOLDEN=1 bash tools/test.sh -k golden
"""
import json
import os
from pathlib import Path

import jax
import pytest

from stp_jax import config as configs
from stp_jax.trainer import Trainer

GOLDEN = Path(__file__).parent / "golden"
MESHES = {"fsdp8": {"fsdp": 8}, "dp2_fsdp2_tp2": {"data": 2, "fsdp": 2, "tensor": 2},
          "fsdp4_cp2": {"fsdp": 4, "context": 2}}


def sharding_table(config_name: str, mesh: dict, overrides=()) -> dict[str, str]:
    cfg = configs.load(config_name, list(overrides))
    with cfg.unlocked():
        cfg.mesh = mesh
    tr = Trainer(cfg)
    flat = jax.tree_util.tree_flatten_with_path(tr.state_sh)[0]
    return {jax.tree_util.keystr(path): str(s.spec) for path, s in flat}


def _diff(want: dict, got: dict) -> list[str]:
    keys = sorted(set(want) | set(got))
    return [f"{k}: golden {want.get(k)} != now {got.get(k)}" for k in keys if want.get(k) != got.get(k)]


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
@pytest.mark.parametrize("config_name", configs.shipped())
def test_sharding_matches_golden(config_name, mesh_name):
    got = sharding_table(config_name, MESHES[mesh_name])
    path = GOLDEN / f"{config_name}__{mesh_name}.json"
    if os.environ.get("STP_UPDATE_GOLDEN"):
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(path.read_text())
    diff = _diff(want, got)
    assert not diff, f"{len(diff)} leaves changed sharding (update tests/golden on purpose):\n" + "\n".join(diff[:20])


def test_golden_catches_a_changed_logical_axis():
    want = json.loads((GOLDEN / "stp_1_3b__fsdp8.json").read_text())
    got = sharding_table("stp_1_3b", MESHES["fsdp8"], ["logical_rules_overrides={'mlp': 'fsdp', 'embed': None}"])
    diff = _diff(want, got)
    assert diff and any("ffn" in d for d in diff) and any("opt_state" in d for d in diff)
    # big weights are really sharded in the golden tables, and the optimizer moments follow them
    q = [k for k in want if k.endswith("['self_attn']['q']['kernel']")]
    assert q and all("fsdp" in want[k] for k in q) and len(q) >= 3  # params, mu, nu
