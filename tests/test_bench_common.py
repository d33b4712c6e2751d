"""tools/bench/common.py's interleaved timing: the paired ratio survives a machine that drifts."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "bench"))

from common import interleave, paired_ratio  # noqa: E402


class DriftingClock:
    """A fake clock: each call of a timed function advances it by that function's cost times the
    machine's current slowness, which changes from round to round (a noisy neighbour)."""

    def __init__(self):
        self.now, self.slowness, self.calls = 0.0, 1.0, []

    def __call__(self):
        return self.now

    def work(self, name, cost):
        def fn():
            self.calls.append(name)
            self.now += cost * self.slowness
        return fn


def test_interleave_pairs_rounds_so_drift_cancels():
    clock = DriftingClock()
    slowness = iter([1.0, 1.0, 3.0, 0.5, 2.0, 1.0, 1.5])  # one value per round, set by the ref's call
    ref_work, ours = clock.work("ref", 2.0), clock.work("ours", 1.0)

    def ref():
        clock.slowness = next(slowness, 1.0)
        ref_work()

    res = interleave({"ref": ref, "ours": ours}, warmup=1, iters=6, clock=clock)
    # warm-up calls each once, then rounds of ref, ours in order
    assert clock.calls == ["ref", "ours"] + ["ref", "ours"] * 6
    assert [round(t, 9) for t in res["ours"]["times"]] == [1.0, 3.0, 0.5, 2.0, 1.0, 1.5]
    assert res["ref"]["iters"] == 6 and res["ours"]["median_s"] == pytest.approx(1.25)
    pr = paired_ratio(res["ref"]["times"], res["ours"]["times"])
    # every round: ours is exactly twice as fast, whatever the machine did
    assert pr == pytest.approx({"median": 2.0, "q1": 2.0, "q3": 2.0})


def test_paired_ratio_quartiles_and_errors():
    pr = paired_ratio([1.0, 1.0, 1.0, 1.0, 1.0], [0.5, 1.0, 2.0, 1.0, 1.0])
    assert pr["median"] == 1.0 and pr["q1"] == 1.0 and pr["q3"] == 1.0
    pr = paired_ratio([2.0, 4.0, 6.0], [1.0, 1.0, 1.0])
    assert pr == pytest.approx({"median": 4.0, "q1": 3.0, "q3": 5.0})
    assert paired_ratio([3.0], [1.5]) == pytest.approx({"median": 2.0, "q1": 2.0, "q3": 2.0})
    with pytest.raises(ValueError, match="same number of rounds"):
        paired_ratio([1.0, 2.0], [1.0])
