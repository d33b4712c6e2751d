"""``Trainer``: everything one training run builds once from a config, and nothing that runs.

Mesh and logical rules, model, optimizer, abstract state and its shardings, the jitted
(donating, NaN-guarded) train step, the autoencoder and text context (loaded on first use),
and the abstract arguments of the step, so that ``stp-aot`` lowers exactly the program that
training runs (``Trainer.lower``). The loop is in stp_jax.train.
"""
from __future__ import annotations

import contextlib
import itertools
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from stp_jax import config as config_lib
from stp_jax import inference
from stp_jax import train_step as ts
from stp_jax.controls.timing import raw_frames
from stp_jax.data import pipeline as pl
from stp_jax.models.dit import COND_KEYS, RUNTIME_FIELDS, DiTConfig, SpaceTimeDiT, dummy_inputs, forward_flops
from stp_jax.parallel import hardware
from stp_jax.parallel import mesh as mesh_lib

STEP_COMPILE_TIMEOUT_S = 1800  # how long the first process to compile the train step waits for the last
_BARRIERS = itertools.count()  # a barrier name is used once (orbax): one per Trainer in this program

class Trainer:
    """Built once per run: mesh, model, optimizer, shardings, the jitted step."""

    def __init__(self, config: ml_collections.ConfigDict, workdir=None, devices=None):
        self.config, self.workdir = config, Path(workdir) if workdir is not None else None
        c = config
        self.run = config_lib.run(c)
        self.flow = config_lib.section_of(c, "flow")
        self.optim = config_lib.section_of(c, "optim")
        self.ae_cfg = config_lib.section_of(c, "autoencoder")
        self.text_cfg = config_lib.section_of(c, "text")
        try:
            self.mesh = mesh_lib.make_mesh(dict(c.mesh), devices=devices)
        except ValueError as e:
            raise ValueError(f"config mesh ({', '.join(f'mesh.{k}={v}' for k, v in c.mesh.items())}): {e}") from None
        self.rules = mesh_lib.logical_rules(dict(c.logical_rules_overrides))
        self.mcfg = DiTConfig.from_dict(dict(c.model))
        self.model = SpaceTimeDiT(self.mcfg)
        self.data_cfg = pl.DataConfig.from_config(c)
        d = self.data_cfg
        try:  # (F', h, w, C), no weights needed
            self.latent = self.ae_cfg.latent_shape(d.num_frames, d.height, d.width)
        except ValueError as e:
            raise ValueError(f"config data.num_frames/height/width and autoencoder.spatial: {e}") from None
        if self.latent[-1] != self.mcfg.in_channels:
            raise ValueError(f"config: autoencoder.kind {self.ae_cfg.kind!r} with autoencoder.spatial "
                             f"{self.ae_cfg.spatial} makes {self.latent[-1]}-channel latents but model.in_channels is "
                             f"{self.mcfg.in_channels}")
        self.text_len = self.text_cfg.length
        self._ae = self._context = None
        self._step_compiled = False  # see step()
        # init traces one dummy clip outside the mesh (parameter shapes do not depend on the batch)
        self.abstract_vars = jax.eval_shape(self._init_vars, jax.random.PRNGKey(0))
        self.param_sh = mesh_lib.param_shardings(self.abstract_vars, self.mesh, self.rules)["params"]
        abstract_params = nn.unbox(self.abstract_vars)["params"]
        self.optimizer = ts.make_optimizer(abstract_params, self.optim, self.run.total_steps)
        self.abstract_state = jax.eval_shape(self._init_state, abstract_params)
        self.state_sh = mesh_lib.state_shardings(self.abstract_state, self.param_sh, self.mesh)
        self.replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        fh, h, w, _ = self.latent
        pt, ph, pw = self.mcfg.patch_size
        self.tokens_per_clip = 2 * (fh // pt) * (h // ph) * (w // pw)
        self.flops_per_step = 3 * forward_flops(self.mcfg, self.tokens_per_clip, self.text_len) * d.global_batch
        self.peak = hardware.peak_flops(self.mesh.devices.flat[0], self.run.peak_flops_per_device)
        self.compiler_options = mesh_lib.compiler_options(self.mesh, c.get("tpu_compiler_options"))
        self.step_fn = jax.jit(self._train_step, donate_argnums=0, out_shardings=(self.state_sh, None),
                               compiler_options=self.compiler_options)

    def batch_sharding(self, ndim: int):
        return mesh_lib.data_sharding(self.mesh, ndim, self.rules)

    @contextlib.contextmanager
    def mesh_context(self):
        """The mesh and the logical-axis rules, for tracing and running the model."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    @property
    def ae(self) -> inference.Autoencoder:
        """The autoencoder (weights loaded on first use: latent batches never need it)."""
        if self._ae is None:
            self._ae = inference.build_autoencoder(self.ae_cfg)
        return self._ae

    @property
    def context(self):
        """[B, S, E] text states of every clip (stp_jax.inference.text_context), batch-sharded."""
        if self._context is None:
            ctx = np.asarray(inference.text_context(self.text_cfg, self.data_cfg.global_batch, self.mcfg.text_dim))
            if ctx.shape[1] != self.text_len:
                raise ValueError(f"text embedding {self.text_cfg.embedding} has {ctx.shape[1]} tokens; "
                                 f"text.length is {self.text_len}")
            self._context = jax.make_array_from_callback(ctx.shape, self.batch_sharding(3), lambda idx: ctx[idx])
        return self._context

    def _init_vars(self, rng):
        fh, h, w, _ = self.latent
        return self.model.init(rng, **dummy_inputs(self.mcfg, 1, fh, h, w, self.text_len))

    def init_state(self) -> ts.TrainState:
        """Fresh (sharded) params, or ``init_from``; then optimizer state and EMA."""
        if self.run.init_from:
            from stp_jax.convert.store import load_config, load_for_mode

            stored = load_config(self.run.init_from)
            mine = self.mcfg.to_dict()
            mismatch = {k: f"{v} (checkpoint) vs {mine[k]} (config)" for k, v in stored.to_dict().items()
                        if k not in RUNTIME_FIELDS and v != mine.get(k)}
            if mismatch:
                raise ValueError(f"init_from {self.run.init_from}: its config differs from model.* in {mismatch}")
            params = load_for_mode(self.run.init_from, self.mcfg, self.param_sh)
        else:
            params = jax.jit(lambda r: nn.unbox(self._init_vars(r))["params"],
                             out_shardings=self.param_sh)(jax.random.PRNGKey(self.run.seed))
        return jax.jit(self._init_state, out_shardings=self.state_sh)(params)

    def _init_state(self, params):
        """Step 0 from full-precision params; frozen matmul weights stored in the compute dtype."""
        params = ts.store_frozen(params, self.optimizer.labels, self.mcfg.dtype)
        return ts.init_state(params, self.optimizer, self.run.ema_decay > 0)

    def _train_step(self, state, batch, rng, context):
        ae = None if "tgt_latents" in batch else self.ae
        mb = inference.model_batch(self.mcfg.mode, ae, batch, context, self.ae_cfg.time_factor)
        nan_at = self.config.debug.nan_at_step
        if nan_at >= 0:  # testing hook: poison one step's latents
            mb["target"] = jnp.where(state.step == nan_at, jnp.nan, mb["target"])
        new, m = ts.train_step(self.model, self.optimizer, state, mb, rng, flow_cfg=self.flow,
                               ema_decay=self.run.ema_decay)
        finite = jnp.isfinite(m["loss"]) & jnp.isfinite(m["grad_norm"])
        new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)  # never keep a bad update
        return new, {**m, "finite": finite}

    def global_batch(self, batch) -> dict:
        """This process's share of a global batch (numpy) as the step's sharded arrays (call inside
        mesh_context())."""
        return {k: jax.make_array_from_process_local_data(self.batch_sharding(np.ndim(v)), np.asarray(v))
                for k, v in batch.items() if k != "seed"}

    def step(self, state, batch, rng):
        """One update from this process's share of a global batch (numpy)."""
        with self.mesh_context():
            gbatch = self.global_batch(batch)
            if not self._step_compiled and jax.process_count() > 1:
                # Every process compiles the step (jit reuses it) and waits for the others before any runs
                # its first collective: CPU (gloo) collectives give a late peer only 30 s, and compile times
                # differ between busy hosts by more than that.
                from orbax.checkpoint import multihost

                self.step_fn.lower(state, gbatch, rng, self.context).compile()
                multihost.sync_global_processes(f"stp_jax_train_step_compiled_{next(_BARRIERS)}",
                                                timeout=STEP_COMPILE_TIMEOUT_S)
            self._step_compiled = True
            return self.step_fn(state, gbatch, rng, self.context)

    # ------------------------------------------------------------ ahead-of-time

    def _sds(self, shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=self.batch_sharding(len(shape)))

    def lower(self, what: str = "train"):
        """The train step on precomputed latents (``train``) or one CFG-batched sampling forward
        (``sample``), lowered with this run's shardings from abstract arguments only.
        Returns (lowered, model FLOPs of one call)."""
        b, (fh, h, w, c), t = self.data_cfg.global_batch, self.latent, self.data_cfg.num_frames
        sds = self._sds
        with self.mesh_context():
            if what == "train":
                batch = {"tgt_latents": sds((b, fh, h, w, c), jnp.float16),
                         "src_latents": sds((b, fh, h, w, c), jnp.float16),
                         "tgt_cam": sds((b, fh, 12), jnp.float32), "src_cam": sds((b, fh, 12), jnp.float32),
                         "tgt_time": sds((b, t), jnp.int32), "src_time": sds((b, t), jnp.int32)}
                if self.data_cfg.composite_aux:  # the renderer's depth and masks per source pixel
                    px = (b, t, self.data_cfg.height, self.data_cfg.width)
                    batch.update(src_depth=sds(px, jnp.float32), src_moving=sds(px, jnp.bool_))
                state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                     self.abstract_state, self.state_sh)
                rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=self.replicated)
                ctx = sds((b, self.text_len, self.mcfg.text_dim), jnp.float32)
                return self.step_fn.lower(state, batch, rng, ctx), self.flops_per_step
            if what == "sample":
                params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                      self.abstract_state.params, self.param_sh)
                n = 2 * b  # the CFG pair on the batch axis
                tm = raw_frames(fh)  # the DiT reads 1 + 4(F - 1) times, whatever the autoencoder's frame mapping
                shapes = {"tgt_cam": (n, fh, 12), "src_cam": (n, fh, 12), "tgt_time": (n, tm), "src_time": (n, tm)}
                cond = {k: sds(shapes[k], jnp.float32) for k in COND_KEYS[self.mcfg.mode]}
                fwd = jax.jit(lambda p, x, tt, ctx, cond: self.model.apply({"params": p}, x, tt, ctx, **cond),
                              compiler_options=self.compiler_options)
                lowered = fwd.lower(params, sds((n, 2 * fh, h, w, c), jnp.float32), sds((n,), jnp.float32),
                                    sds((n, self.text_len, self.mcfg.text_dim), jnp.float32), cond)
                return lowered, forward_flops(self.mcfg, self.tokens_per_clip, self.text_len) * n
        raise ValueError(f"what {what!r}: expected 'train' or 'sample'")
