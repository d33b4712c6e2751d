"""Training: ``train_and_evaluate(config, workdir)`` and the ``stp-train`` command.

One run: mesh from ``config.mesh``; parameters initialised sharded (``jax.eval_shape`` ->
``jax.jit(out_shardings=...)``) or restored from a converted checkpoint (``init_from``);
the jitted train step (stp_jax.train_step) with state donation, and a guard that keeps the
previous state when the loss or gradients are not finite; an Orbax CheckpointManager
(async) holding the TrainState and the Grain iterator state, keeping ``keep_checkpoints``,
saving on SIGTERM/preemption and resuming automatically from the newest one; metrics to
``workdir/metrics.jsonl`` and TensorBoard event files in ``workdir/tb``; periodic retiming
PSNR and sample videos on held-out procedural scenes (stp_jax.evaluate); the final (EMA if
kept) weights as a converted folder in ``workdir/model`` that stp-sample and stp-eval load.

Workdir layout:
  config.json          the resolved config (also stored with every checkpoint)
  checkpoints/<step>/  Orbax: state/ (TrainState), data/ (Grain iterator), config/
  metrics.jsonl        one JSON object per logged step / evaluation
  tb/                  TensorBoard event files
  samples/step_<N>/    evaluation videos (mp4), contact sheets, eval.json
  model/               final weights (stp_jax.convert.store layout) + run.json
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import linen as nn

from stp_jax import inference
from stp_jax import train_step as ts
from stp_jax.data import pipeline as pl
from stp_jax.models.dit import DiTConfig, SpaceTimeDiT, dummy_inputs, forward_flops
from stp_jax.parallel import mesh as mesh_lib

# Dense bf16 peak FLOP/s per device, by device_kind prefix (vendor figures), for MFU.
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12, "TPU7x": 2307e12,
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA B200": 2250e12, "NVIDIA A100": 312e12,
}


class NonFiniteError(RuntimeError):
    """The loss or the gradients became NaN/Inf; the state was not updated or saved."""


def peak_flops(device, override: float = 0.0) -> float | None:
    if override:
        return float(override)
    kind = getattr(device, "device_kind", "")
    for prefix, flops in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
        if kind.startswith(prefix):
            return flops
    return None


def is_main() -> bool:
    return jax.process_index() == 0


def data_config(config, split: str = "train", **kw) -> pl.DataConfig:
    d = {k: (None if v == "" else v) for k, v in dict(config.data).items()}
    if d.get("warp_probs") is not None:
        d["warp_probs"] = tuple(tuple(x) for x in d["warp_probs"])
    return pl.DataConfig(split=split, seed=config.seed, **{**d, **kw})


DATA_CACHE = "~/.cache/stp_jax/tfds"


def prepare_data(d: pl.DataConfig) -> pl.DataConfig:
    """``tfds`` + bare ``camxtime_procedural``: render ``num_scenes`` grids of this size into
    an ArrayRecord dataset once (process 0; reused afterwards) and point the loader at it."""
    if d.source != "tfds" or d.tfds_name != "camxtime_procedural":
        return d
    import dataclasses
    import os

    from stp_jax.data.tfds_builders.camxtime_procedural import build, config_name

    data_dir = os.path.expanduser(d.tfds_dir or DATA_CACHE)
    test = 8  # the held-out evaluation renders its own scenes; this split is for TFDS users
    if is_main():
        log(f"procedural Cam×Time dataset: {d.num_scenes} scenes in {data_dir} (built once)")
        build(data_dir, d.num_frames, d.num_cameras, d.height, d.width, train=d.num_scenes, test=test)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("camxtime_procedural built")
    name = config_name(d.num_frames, d.num_cameras, d.height, d.width, d.num_scenes, test)
    return dataclasses.replace(d, tfds_dir=data_dir, tfds_name=f"camxtime_procedural/{name}")


def latent_shape(config) -> tuple[int, int, int, int]:
    """(F', h, w, C) of one clip's latents for the config's autoencoder and clip size, known
    without loading any weights (the Wan VAE's layout is the published one)."""
    a, d = config.autoencoder, config.data
    if a.kind == "wan":
        from stp_jax.models.wan_vae import WanVAEConfig

        ae = inference.Autoencoder("wan", WanVAEConfig().z_dim, inference.WAN_SPATIAL, impl=None)
    else:
        ae = inference.build_autoencoder(a.kind, a.spatial)
    return ae.latent_shape(d.num_frames, d.height, d.width)


def model_config(config) -> DiTConfig:
    return DiTConfig.from_dict(dict(config.model))


# ---------------------------------------------------------------- the run


class Trainer:
    """Everything one run builds once: mesh, model, optimizer, shardings, jitted step."""

    def __init__(self, config: ml_collections.ConfigDict, workdir=None, devices=None):
        self.config, self.workdir = config, Path(workdir) if workdir is not None else None
        self.mesh = mesh_lib.make_mesh(dict(config.mesh), devices=devices)
        self.rules = mesh_lib.logical_rules(dict(config.logical_rules_overrides))
        self.mcfg = model_config(config)
        self.model = SpaceTimeDiT(self.mcfg)
        self.data_cfg = data_config(config)
        d = self.data_cfg
        self.latent = latent_shape(config)  # (F', h, w, C), known without loading any weights
        if self.latent[-1] != self.mcfg.in_channels:
            raise ValueError(f"config: the {config.autoencoder.kind} autoencoder makes {self.latent[-1]}-channel "
                             f"latents but model.in_channels is {self.mcfg.in_channels}")
        self.text_len = int(config.text.length)
        self._ae = self._context = None
        # init traces one dummy clip outside the mesh (parameter shapes do not depend on the batch)
        self.abstract_vars = jax.eval_shape(self._init_vars, jax.random.PRNGKey(0))
        self.param_sh = mesh_lib.param_shardings(self.abstract_vars, self.mesh, self.rules)["params"]
        abstract_params = nn.unbox(self.abstract_vars)["params"]
        o = config.optim
        self.optimizer = ts.make_optimizer(abstract_params, lr=o.lr, warmup=o.warmup, total_steps=config.total_steps,
                                           weight_decay=o.weight_decay, clip=o.clip, b1=o.b1, b2=o.b2,
                                           trainable=o.trainable, accumulate=o.accumulate)
        use_ema = config.ema_decay > 0
        self.abstract_state = jax.eval_shape(lambda p: ts.init_state(p, self.optimizer, use_ema), abstract_params)
        self.state_sh = state_shardings(self.abstract_state, self.param_sh, self.mesh)
        self.batch_sh = lambda ndim: mesh_lib.data_sharding(self.mesh, ndim, self.rules)  # noqa: E731
        self.replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        fh, h, w, c = self.latent
        pt, ph, pw = self.mcfg.patch_size
        self.tokens_per_clip = 2 * (fh // pt) * (h // ph) * (w // pw)
        self.flops_per_step = 3 * forward_flops(self.mcfg, self.tokens_per_clip, self.text_len) * d.global_batch
        self.peak = peak_flops(self.mesh.devices.flat[0], config.peak_flops_per_device)
        self.compiler_options = mesh_lib.compiler_options(self.mesh, config.get("tpu_compiler_options"))
        self._step = jax.jit(self._train_step, donate_argnums=0, out_shardings=(self.state_sh, None),
                             compiler_options=self.compiler_options)

    @property
    def ae(self) -> inference.Autoencoder:
        """The autoencoder (weights loaded on first use: latent batches never need it)."""
        if self._ae is None:
            a = self.config.autoencoder
            self._ae = inference.build_autoencoder(a.kind, a.spatial, a.path or None)
        return self._ae

    @property
    def context(self):
        """[B, S, E] text states of every clip (stp_jax.inference.text_context)."""
        if self._context is None:
            ctx = inference.text_context(dict(self.config.text), self.data_cfg.global_batch, self.mcfg.text_dim)
            if ctx.shape[1] != self.text_len:
                raise ValueError(f"text embedding {self.config.text.embedding} has {ctx.shape[1]} tokens; "
                                 f"text.length is {self.text_len}")
            ctx = np.asarray(ctx)
            self._context = jax.make_array_from_callback(ctx.shape, self.batch_sh(3), lambda idx: ctx[idx])
        return self._context

    def _ctx(self):
        return _MeshContext(self.mesh, self.rules)

    def _init_vars(self, rng):
        fh, h, w, _ = self.latent
        inputs = dummy_inputs(self.mcfg, 1, fh, h, w, self.text_len)
        return self.model.init(rng, **inputs)

    def init_state(self) -> ts.TrainState:
        """Fresh (sharded) params, or ``init_from``; then optimizer state and EMA."""
        if self.config.init_from:
            from stp_jax.convert.store import load_config

            stored = load_config(self.config.init_from)
            mismatch = {k: (v, getattr(self.mcfg, k)) for k, v in stored.to_dict().items()
                        if k not in ("dtype", "attention", "context_parallel", "remat", "splash_block",
                                     "param_dtype", "mode")
                        and (list(v) if isinstance(v, tuple) else v)
                        != (list(getattr(self.mcfg, k)) if isinstance(getattr(self.mcfg, k), tuple)
                            else getattr(self.mcfg, k))}
            if mismatch:
                raise ValueError(f"init_from {self.config.init_from}: its config differs from model.* in "
                                 f"{ {k: f'{a} (checkpoint) vs {b} (config)' for k, (a, b) in mismatch.items()} }")
            params = _load_for_mode(self.config.init_from, self.mcfg, stored, self.param_sh, self.abstract_vars)
        else:
            params = jax.jit(lambda r: nn.unbox(self._init_vars(r))["params"],
                             out_shardings=self.param_sh)(jax.random.PRNGKey(self.config.seed))
        use_ema = self.config.ema_decay > 0
        return jax.jit(lambda p: ts.init_state(p, self.optimizer, use_ema), out_shardings=self.state_sh)(params)

    def _train_step(self, state, batch, rng, context):
        c = self.config
        ae = None if "target_latents" in batch else self.ae
        mb = inference.model_batch(self.mcfg.mode, ae, batch, context)
        if c.debug.nan_at_step >= 0:  # testing hook: poison one step's latents
            bad = state.step == c.debug.nan_at_step
            mb["target"] = jnp.where(bad, jnp.nan, mb["target"])
        new, m = ts.train_step(self.model, self.optimizer, state, mb, rng, shift=c.flow.shift,
                               timestep_mode=c.flow.timestep_mode, ema_decay=c.ema_decay,
                               prediction=c.flow.prediction)
        finite = jnp.isfinite(m["loss"]) & jnp.isfinite(m["grad_norm"])
        new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)  # never keep a bad update
        return new, {**m, "finite": finite}

    def step(self, state, batch, rng):
        with self._ctx():
            gbatch = {k: jax.make_array_from_process_local_data(self.batch_sh(np.ndim(v)), np.asarray(v))
                      for k, v in batch.items() if k != "seed"}
            return self._step(state, gbatch, rng, self.context)


class _MeshContext:
    def __init__(self, mesh, rules):
        self.mesh, self.rules = mesh, rules

    def __enter__(self):
        self._a = jax.set_mesh(self.mesh)
        self._a.__enter__()
        self._b = nn.logical_axis_rules(self.rules)
        self._b.__enter__()

    def __exit__(self, *exc):
        self._b.__exit__(*exc)
        self._a.__exit__(*exc)


def _load_for_mode(path, mcfg, stored, shardings, abstract_vars):
    """Params of a converted checkpoint for ``mcfg``; a Wan checkpoint into a conditioned mode
    gets fresh camera/time modules (zero camera encoder, identity projector, zero time
    output: the model starts as Wan)."""
    from stp_jax.convert.store import load_pretrained

    if stored.mode == mcfg.mode:
        _, params = load_pretrained(path, shardings=shardings, dtype=mcfg.param_dtype)
        return params
    if stored.mode != "wan" and not (stored.mode == "recammaster" and mcfg.mode == "spacetimepilot"):
        raise ValueError(f"init_from {path}: a {stored.mode} checkpoint cannot initialise a {mcfg.mode} model")
    fresh = jax.jit(lambda: nn.unbox(SpaceTimeDiT(mcfg).init(jax.random.PRNGKey(0), **dummy_inputs(mcfg)))["params"],
                    out_shardings=shardings)()
    base_sh = _subtree_like(shardings, stored, mcfg)
    _, base = load_pretrained(path, shardings=base_sh, dtype=mcfg.param_dtype)
    return _merge(fresh, base)


def _subtree_like(shardings, stored, mcfg):
    abstract = jax.eval_shape(lambda: nn.unbox(SpaceTimeDiT(stored.replace(param_dtype=mcfg.param_dtype)).init(
        jax.random.PRNGKey(0), **dummy_inputs(stored)))["params"])
    return _pick(shardings, abstract)


def _pick(full, like):
    if isinstance(like, dict):
        return {k: _pick(full[k], v) for k, v in like.items()}
    return full


def _merge(fresh, base):
    if isinstance(fresh, dict):
        return {k: _merge(v, base[k]) if k in base else v for k, v in fresh.items()}
    return base


def state_shardings(abstract_state, param_sh, mesh):
    """Shardings for every TrainState leaf: optimizer moments and EMA follow the parameter
    at the same path (matched by path suffix and shape); scalars are replicated."""
    flat = {tuple(_key(k) for k in path): s for path, s in jax.tree_util.tree_flatten_with_path(param_sh)[0]}
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def pick(path, leaf):
        keys = tuple(_key(k) for k in path)
        for i in range(len(keys)):
            s = flat.get(keys[i:])
            if s is not None and len(s.spec) <= len(leaf.shape):
                return s
        return rep

    return jax.tree_util.tree_map_with_path(pick, abstract_state)


def _key(k):
    return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


# ---------------------------------------------------------------- logging


class MetricWriter:
    """JSONL + TensorBoard (tensorboardX) on process 0; no-ops elsewhere."""

    def __init__(self, workdir: Path):
        self.on = is_main()
        if self.on:
            from tensorboardX import SummaryWriter

            self.jsonl = open(workdir / "metrics.jsonl", "a")  # noqa: SIM115
            self.tb = SummaryWriter(str(workdir / "tb"))

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


# ---------------------------------------------------------------- checkpoints


def checkpoint_manager(workdir: Path, keep: int) -> ocp.CheckpointManager:
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
    return ocp.CheckpointManager(_abs(workdir) + "/checkpoints", options=opts)


def _abs(path) -> str:
    """Local paths made absolute; gs:// (and other URLs) as they are."""
    s = str(path)
    return s if "://" in s else str(Path(s).absolute())


def _save(mngr, step, state, data_iter, config, force=False):
    import grain

    return mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter),
        config=ocp.args.JsonSave(config.to_dict())), force=force)


def _restore(mngr, step, abstract_state, data_iter):
    import grain

    r = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=grain.checkpoint.CheckpointRestore(data_iter)))
    return r.state


def config_to_json(config) -> str:
    return json.dumps(config.to_dict(), indent=2, default=list)


# ---------------------------------------------------------------- main loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
    """Train (resuming from ``workdir`` when it holds checkpoints). Returns a summary dict:
    final step, last metrics, evaluation results, why it stopped."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    tr = Trainer(config, workdir)
    tr.data_cfg = prepare_data(tr.data_cfg)
    if is_main():
        (workdir / "config.json").write_text(config_to_json(config))
    loader = pl.make_loader(tr.data_cfg)
    data_iter = iter(loader)
    mngr = checkpoint_manager(workdir, config.keep_checkpoints)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tr.abstract_state,
                            tr.state_sh)
    latest = mngr.latest_step()
    if latest is not None:
        state = _restore(mngr, latest, abstract, data_iter)
        log(f"resumed from {workdir}/checkpoints/{latest}")
    else:
        state = tr.init_state()
    start = int(state.step)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    log(f"{config.name}: {n_params / 1e6:.2f}M params, mesh {dict(tr.mesh.shape)}, {jax.device_count()} devices "
        f"({jax.devices()[0].device_kind}), {tr.tokens_per_clip} tokens/clip, global batch {tr.data_cfg.global_batch}, "
        f"steps {start} -> {config.total_steps}")

    t_train = time.time()  # the time limit counts training only (not the data build or compilation before)
    stop = {"why": None}
    old_handler = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        stop["why"] = "preempted"

    if threading_is_main():
        signal.signal(signal.SIGTERM, on_term)
    writer = MetricWriter(workdir)
    rng = jax.random.PRNGKey(config.seed)
    limit = config.time_limit_minutes * 60 if config.time_limit_minutes > 0 else None
    pbar = _progress(start, config.total_steps)
    last, window_t, window_steps, evals = {}, time.perf_counter(), 0, {}
    prev = None  # the previous step's (step number, metrics), checked one step late (keeps dispatch async)
    step = start
    try:
        while step < config.total_steps:
            batch = next(data_iter)
            state, metrics = tr.step(state, batch, rng)
            if prev is not None:
                _check_finite(*prev, mngr)
            prev = (step, metrics, batch.get("seed"))
            step += 1
            window_steps += 1
            if pbar is not None:
                pbar.update(1)
            if step % config.log_every == 0 or step == config.total_steps:
                _check_finite(*prev, mngr)
                dt = time.perf_counter() - window_t
                last = _scalars(metrics, tr, config, window_steps / dt, state)
                writer.write(step, last)
                if pbar is not None:
                    pbar.set_postfix(loss=f"{last['loss']:.4f}", sps=f"{last['steps_per_s']:.2f}")
                else:
                    log(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in last.items() if v is not None))
                window_t, window_steps = time.perf_counter(), 0
            if limit is not None and time.time() - t_train > limit:
                stop["why"] = stop["why"] or "time limit"
            if stop["why"] is None and mngr.reached_preemption(step):
                stop["why"] = "preempted"
            if stop["why"] or step % config.checkpoint_every == 0 or step == config.total_steps:
                _check_finite(*prev, mngr)
                _save(mngr, step, state, data_iter, config, force=bool(stop["why"]))
            if config.eval_every > 0 and step % config.eval_every == 0 and step != config.total_steps:
                evals = _evaluate(tr, state, step, writer)
            if stop["why"]:
                break
        mngr.wait_until_finished()
    finally:
        if pbar is not None:
            pbar.close()
        if threading_is_main():
            signal.signal(signal.SIGTERM, old_handler)
    if stop["why"] in (None, "time limit"):
        stop["why"] = stop["why"] or "done"
        if config.eval_every > 0:
            evals = _evaluate(tr, state, step, writer)
        export_model(tr, state, workdir / "model")
    writer.close()
    mngr.close()
    log(f"stopped at step {step} ({stop['why']}) after {time.time() - t_start:.0f}s; workdir {workdir}")
    return {"step": step, "metrics": last, "eval": evals, "stopped": stop["why"]}


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _check_finite(step, metrics, seeds, mngr):
    if bool(metrics["finite"]):
        return
    mngr.wait_until_finished()
    good = mngr.latest_step()
    raise NonFiniteError(
        f"non-finite training signal at step {step}: loss={float(metrics['loss'])}, "
        f"grad_norm={float(metrics['grad_norm'])} (batch scene seeds {None if seeds is None else list(np.asarray(seeds))}). "
        f"The update was discarded and no checkpoint was written after it; the last good checkpoint is "
        f"{'step ' + str(good) if good is not None else 'none'}. Check the data, lower optim.lr or raise optim.clip.")


def _scalars(metrics, tr: Trainer, config, steps_per_s: float, state) -> dict:
    n_dev = jax.device_count()
    flops = tr.flops_per_step * steps_per_s
    out = {k: float(v) for k, v in metrics.items() if k != "finite"}
    out.update(steps_per_s=steps_per_s, clips_per_s=steps_per_s * tr.data_cfg.global_batch,
               tokens_per_s=steps_per_s * tr.data_cfg.global_batch * tr.tokens_per_clip,
               lr=float(_lr(tr.optimizer, config, int(state.step))),
               mfu=flops / (tr.peak * n_dev) if tr.peak else None)
    return out


def _lr(optimizer, config, step):
    import optax

    o = config.optim
    return optax.warmup_cosine_decay_schedule(0.0, o.lr, max(o.warmup, 1), max(config.total_steps, o.warmup + 1),
                                              o.lr * 0.01)(step // max(o.accumulate, 1))


def _evaluate(tr: Trainer, state, step: int, writer: MetricWriter) -> dict:
    from stp_jax import evaluate

    params = state.ema if state.ema is not None else state.params
    c = tr.config
    res = evaluate.retiming_eval(
        tr.model, params, tr.ae, data_cfg=tr.data_cfg, num_scenes=c.eval.num_scenes, schedules=tuple(c.eval.schedules),
        steps=c.sample.steps, shift=c.sample.shift, prediction=c.flow.prediction, text=dict(c.text), seed=c.seed,
        out_dir=tr.workdir / "samples" / f"step_{step}" if is_main() else None)
    writer.write(step, evaluate.flat_scalars(res))
    log(f"eval at step {step}:\n" + evaluate.markdown_table(res))
    return res


def export_model(tr: Trainer, state, out: Path):
    """Final weights (EMA when kept) as a converted folder + run.json (autoencoder, text,
    data shape, sampling defaults) for stp-sample / stp-eval. Called by every process."""
    from stp_jax.convert.store import save_pretrained

    c = tr.config
    run = {"autoencoder": dict(c.autoencoder), "text": dict(c.text),
           "sample": {**dict(c.sample), "prediction": c.flow.prediction},
           "data": {k: c.data[k] for k in ("num_frames", "height", "width", "num_cameras")}, "config": c.name,
           "step": int(state.step)}
    params = state.ema if state.ema is not None else state.params
    save_pretrained(out, tr.mcfg, params, meta={"source": "stp-train", "step": int(state.step)}, overwrite=True,
                    extra_files={"run.json": json.dumps(run, indent=2, default=list)})


def log(msg: str):
    if is_main():
        print(msg, flush=True)


def _progress(start, total):
    if not is_main() or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)


# ---------------------------------------------------------------- CLI


def main(argv=None):
    p = argparse.ArgumentParser(prog="stp-train", description="Train SpaceTimePilot (resumes from WORKDIR).")
    p.add_argument("--config", required=True, help="shipped config name or FILE.py, optionally :variant")
    p.add_argument("--workdir", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=3e-4 --set mesh.fsdp=8 (repeatable)")
    args = p.parse_args(argv)
    from stp_jax import configs
    from stp_jax.parallel.distributed import maybe_initialize

    maybe_initialize()
    try:
        config = configs.load(args.config, args.set)
        summary = train_and_evaluate(config, args.workdir)
    except (ValueError, NonFiniteError) as e:
        print(f"stp-train: error: {e}", file=sys.stderr)
        return 2
    return 0 if summary["stopped"] in ("done", "time limit") else 3


if __name__ == "__main__":
    sys.exit(main())
