"""What a run reports: training metrics averaged over each logging window (``clu.metrics``),
written as JSONL and TensorBoard event files on process 0, progress on a terminal, and log lines."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import jax
from clu import metrics as clu_metrics


def is_main() -> bool:
    return jax.process_index() == 0


def log(msg: str):
    if is_main():
        print(msg, flush=True)


# Means over the steps of one logging window of what the train step reports: always these, and the
# others when the step reports them (update_norm: OptimConfig.update_norm; the loss's terms when it has
# more than one, flow.FlowConfig.copy_loss).
TRAIN_METRICS = ("loss", "grad_norm", "sigma_mean")
OPTIONAL_METRICS = ("update_norm", "flow_loss", "copy_ce", "depth_mse", "depth_mae", "moving_ce", "gate_ce")


@functools.cache
def _collection(keys: tuple[str, ...]):
    return clu_metrics.Collection.create(**{k: clu_metrics.Average.from_output(k) for k in keys})


def window_metrics(step_metrics: list[dict]) -> dict[str, float]:
    """Average a window of per-step metric dicts (device arrays) with clu's Average."""
    acc = None
    for m in step_metrics:
        metrics = _collection(TRAIN_METRICS + tuple(k for k in OPTIONAL_METRICS if k in m))
        one = metrics.single_from_model_output(**{k: v for k, v in m.items() if k != "finite"})
        acc = one if acc is None else acc.merge(one)
    return {k: float(v) for k, v in acc.compute().items()} if acc is not None else {}


def parameter_overview(params) -> str:
    """Per-parameter shapes and sizes (clu.parameter_overview), with the total."""
    from clu import parameter_overview as po

    return po.get_parameter_overview(params, include_stats=False)


class MetricWriter:
    """JSONL (``workdir/metrics.jsonl``) + TensorBoard (``workdir/tb``) on process 0; no-ops elsewhere."""

    def __init__(self, workdir: Path):
        self.on = is_main()
        if self.on:
            from tensorboardX import SummaryWriter

            self.jsonl = open(Path(workdir) / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close()
            self.tb = SummaryWriter(str(Path(workdir) / "tb"))

    def write(self, step: int, scalars: dict):
        if not self.on:
            return
        clean = {k: float(v) for k, v in scalars.items() if v is not None}
        self.jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
        self.jsonl.flush()
        for k, v in clean.items():
            self.tb.add_scalar(k, v, int(step))
        self.tb.flush()

    def close(self):
        if self.on:
            self.jsonl.close()
            self.tb.close()


def progress(start: int, total: int):
    """A tqdm bar on an interactive terminal (process 0), else None."""
    if not is_main() or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
