"""Training: ``train_and_evaluate(config, workdir)``, the loop (the ``stp-train`` command).

The run is built by stp_jax.trainer.Trainer (mesh, sharded state, jitted step); this file
reads top to bottom as what happens: prepare the data, restore the newest intact checkpoint
(or initialise), then step, log, checkpoint, evaluate, and on the way out export the final
(EMA if kept) weights. SIGTERM/SIGINT save and stop (exit 3 from the CLI); a non-finite loss
or gradient discards that update and stops with the last good checkpoint intact.

Workdir layout:
  config.json          the resolved config (written once the run has started)
  checkpoints/<step>/  Orbax: state/ (TrainState), data/ (Grain iterator), config/
  metrics.jsonl        one JSON object per logged window / evaluation
  tb/                  TensorBoard event files
  samples/step_<N>/    evaluation videos, contact sheets, eval.json
  model/               final weights (stp_jax.convert.store layout) + run.json
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import threading
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

from stp_jax import checkpointing as ckpt
from stp_jax import config as config_lib
from stp_jax import evaluate
from stp_jax.data import pipeline as pl
from stp_jax.trainer import Trainer
from stp_jax.writers import MetricWriter, is_main, log, parameter_overview, progress, window_metrics


class NonFiniteError(RuntimeError):
    """The loss or the gradients became NaN/Inf; the state was not updated or saved."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
    """Train (resuming from ``workdir`` when it holds checkpoints). Returns a summary dict:
    final step, last metrics, evaluation results, why it stopped."""
    workdir = Path(workdir)
    t_start = time.time()
    tr = Trainer(config, workdir)  # checks the config's shapes before anything is written
    workdir.mkdir(parents=True, exist_ok=True)
    run = tr.run
    tr.data_cfg = pl.prepare(tr.data_cfg, log=log)
    phase = pl.at_step(tr.data_cfg, 0)  # the curriculum's first phase (checkpoints restore into any phase)
    data_iter = iter(pl.make_loader(phase))
    mngr = ckpt.manager(workdir, run.keep_checkpoints)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tr.abstract_state,
                            tr.state_sh)
    step, state = ckpt.restore_latest(mngr, abstract, data_iter, log=log)
    if state is not None:
        log(f"resumed from {workdir}/checkpoints/{step}")
    else:
        state = tr.init_state()
        log(parameter_overview(state.params))
    if is_main():  # only now: a failed restore leaves the workdir as it was
        (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=list))
    step = start = int(state.step)
    log(f"{run.name}: {sum(x.size for x in jax.tree.leaves(state.params)) / 1e6:.2f}M params, mesh "
        f"{dict(tr.mesh.shape)}, {jax.device_count()} devices ({jax.devices()[0].device_kind}), "
        f"{tr.tokens_per_clip} tokens/clip, global batch {tr.data_cfg.global_batch}, steps {start} -> {run.total_steps}")

    writer, pbar = MetricWriter(workdir), progress(start, run.total_steps)
    rng = jax.random.PRNGKey(run.seed)
    limit = run.time_limit_minutes * 60 if run.time_limit_minutes > 0 else None
    last, evals, window = {}, {}, []
    window_t, t_train = time.perf_counter(), time.time()  # the time limit counts training only
    prev = None  # the previous step's (step, metrics, seeds), checked one step late (keeps dispatch async)
    stop = {"why": None}
    with _stop_signals(stop):
        while step < run.total_steps:
            if pl.at_step(tr.data_cfg, step) != phase:  # the curriculum moves on: same record order, new pairs
                phase = pl.at_step(tr.data_cfg, step)
                data_iter = pl.continue_loader(phase, data_iter)
                log(f"step {step}: data phase fixed_camera_pairs={phase.fixed_camera_pairs}")
            batch = next(data_iter)
            state, metrics = tr.step(state, batch, rng)
            if prev is not None:
                _check_finite(*prev, mngr)
            prev = (step, metrics, batch.get("seed"))
            step += 1
            window.append(metrics)
            if pbar is not None:
                pbar.update(1)
            if step % run.log_every == 0 or step == run.total_steps:
                _check_finite(*prev, mngr)
                last = _scalars(window, tr, time.perf_counter() - window_t, state)
                writer.write(step, last)
                if pbar is not None:
                    pbar.set_postfix(loss=f"{last['loss']:.4f}", sps=f"{last['steps_per_s']:.2f}")
                else:
                    log(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in last.items() if v is not None))
                window, window_t = [], time.perf_counter()
            if limit is not None and time.time() - t_train > limit:
                stop["why"] = stop["why"] or "time limit"
            if stop["why"] is None and mngr.reached_preemption(step):
                stop["why"] = "preempted"
            if stop["why"] or step % run.checkpoint_every == 0 or step == run.total_steps:
                _check_finite(*prev, mngr)
                ckpt.save(mngr, step, state, data_iter, config, force=bool(stop["why"]))
            if run.eval_every > 0 and step % run.eval_every == 0 and step != run.total_steps:
                evals = _evaluate(tr, state, step, writer)
            if stop["why"]:
                break
        ckpt.wait(mngr)
    if pbar is not None:
        pbar.close()
    if stop["why"] in (None, "time limit"):
        stop["why"] = stop["why"] or "done"
        if run.eval_every > 0:
            evals = _evaluate(tr, state, step, writer)
        export_model(tr, state, workdir / "model")
    writer.close()
    mngr.close()
    log(f"stopped at step {step} ({stop['why']}) after {time.time() - t_start:.0f}s; workdir {workdir}")
    return {"step": step, "metrics": last, "eval": evals, "stopped": stop["why"]}


@contextlib.contextmanager
def _stop_signals(stop: dict):
    """SIGTERM (preemption) and SIGINT (Ctrl-C) ask the loop to save and stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum, frame):
        stop["why"] = "preempted" if signum == signal.SIGTERM else "interrupted"

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _check_finite(step, metrics, seeds, mngr):
    if bool(metrics["finite"]):
        return
    ckpt.wait(mngr)
    good = mngr.latest_step()
    raise NonFiniteError(
        f"non-finite training signal at step {step}: loss={float(metrics['loss'])}, "
        f"grad_norm={float(metrics['grad_norm'])} (batch scene seeds {None if seeds is None else list(np.asarray(seeds))}). "
        f"The update was discarded and no checkpoint was written after it; the last good checkpoint is "
        f"{'step ' + str(good) if good is not None else 'none'}. Check the data, lower optim.lr or raise optim.clip.")


def _scalars(window: list[dict], tr: Trainer, seconds: float, state) -> dict:
    """The window's mean metrics plus throughput, learning rate and MFU."""
    from stp_jax.train_step import lr_schedule

    steps_per_s = len(window) / max(seconds, 1e-9)
    out = window_metrics(window)
    b = tr.data_cfg.global_batch
    out.update(steps_per_s=steps_per_s, clips_per_s=steps_per_s * b, tokens_per_s=steps_per_s * b * tr.tokens_per_clip,
               lr=float(lr_schedule(tr.optim, tr.run.total_steps)(int(state.step) // tr.optim.accumulate)),
               mfu=tr.flops_per_step * steps_per_s / (tr.peak * jax.device_count()) if tr.peak else None)
    return out


def _evaluate(tr: Trainer, state, step: int, writer: MetricWriter) -> dict:
    params = state.ema if state.ema is not None else state.params
    e, s = config_lib.section_of(tr.config, "eval"), config_lib.section_of(tr.config, "sample")
    res = evaluate.retiming_eval(
        tr.model, params, tr.ae, data_cfg=tr.data_cfg, num_scenes=e.num_scenes, cases=e.cases, steps=s.steps,
        shift=s.shift, prediction=tr.flow.prediction, text=tr.text_cfg, seed=tr.run.seed, with_lpips=e.lpips,
        out_dir=tr.workdir / "samples" / f"step_{step}" if is_main() else None)
    writer.write(step, evaluate.flat_scalars(res))
    log(f"eval at step {step}:\n" + evaluate.markdown_table(res))
    return res


def export_model(tr: Trainer, state, out: Path):
    """Final weights (EMA when kept) as a converted folder + run.json (autoencoder, text,
    data shape, sampling defaults) for stp-sample / stp-eval. Called by every process."""
    from stp_jax.convert.store import save_pretrained

    c = tr.config
    run = {"autoencoder": dataclasses.asdict(tr.ae_cfg), "text": dataclasses.asdict(tr.text_cfg),
           "sample": {**dict(c.sample), "prediction": tr.flow.prediction},
           "data": {k: getattr(tr.data_cfg, k) for k in ("num_frames", "height", "width", "num_cameras")},
           "config": c.name, "step": int(state.step)}
    params = state.ema if state.ema is not None else state.params
    save_pretrained(out, tr.mcfg, params, meta={"source": "stp-train", "step": int(state.step)}, overwrite=True,
                    extra_files={"run.json": json.dumps(run, indent=2, default=list)})
