"""Defaults every shipped config starts from (each file changes what it needs)."""
import ml_collections

from stp_jax.models.dit import preset


def base(name: str, model: str = "tiny", **model_overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = name
    c.seed = 0
    # ---- model: every SpaceTimeDiT field (stp_jax.models.dit.DiTConfig)
    c.model = preset(model, **model_overrides).to_dict()
    c.init_from = ""  # a converted checkpoint folder (stp-convert) to fine-tune from; "" = fresh init
    c.autoencoder = dict(kind="patch", spatial=4, path="")  # patch | wan (path = converted Wan VAE folder)
    c.text = dict(kind="null", length=8, embedding="")  # null | file (embedding = .npy [S, E] for every clip)
    # ---- data: stp_jax.data.pipeline.DataConfig fields
    c.data = dict(source="procedural", num_frames=17, num_cameras=17, height=32, width=32, num_scenes=100_000,
                  global_batch=8, worker_count=1, tfds_name="camxtime_procedural", tfds_dir="", warp_probs=None,
                  latents_dir="")  # source: procedural | tfds | latents (stp-precompute output)
    # ---- optimisation (stp_jax.train_step.make_optimizer)
    c.total_steps = 10_000
    c.time_limit_minutes = 0.0  # > 0: stop, save, evaluate and export after this much wall time
    c.optim = dict(lr=1e-4, warmup=100, weight_decay=0.01, clip=1.0, b1=0.9, b2=0.999, accumulate=1,
                   trainable="all")  # all | recammaster | spacetimepilot | a regex over param paths
    c.ema_decay = 0.0  # > 0 keeps an EMA of the params (exported instead of the raw params)
    # timestep_mode: uniform (Gaussian-weighted) | logit_normal; prediction: velocity (published) | x0
    c.flow = dict(shift=5.0, timestep_mode="uniform", prediction="velocity")
    # ---- parallelism: mesh axes (one may be -1 = the rest) and logical-rule overrides
    c.mesh = dict(data=1, fsdp=-1, context=1, tensor=1)
    c.logical_rules_overrides = {}
    # XLA options for TPU compiles of the train step and of stp-aot (stp_jax.parallel.mesh.compiler_options).
    # libtpu 0.0.42.1 aborts ("rotated_pincer_emitter_base.cc:1524 Check failed: get_loop_bound(color)")
    # compiling the data-parallel gradient all-reduce of a model with a >=2048-wide text projection
    # on multi-chip slices; single-colour all-reduces avoid it. Add others with --set tpu_compiler_options.K=V.
    c.tpu_compiler_options = {"xla_jf_use_multi_colors_in_all_reduce_if_supported": False}
    # ---- logging, checkpoints, evaluation
    c.log_every = 50
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.eval_every = 0  # > 0: retiming PSNR + sample videos on held-out procedural scenes every N steps and at the end
    c.eval = dict(num_scenes=4, schedules=("reverse", "freeze_mid", "slowmo_first_half"))
    c.sample = dict(steps=50, shift=5.0, cfg_scale=5.0)
    c.peak_flops_per_device = 0.0  # 0 = look the device up (stp_jax.train.PEAK_FLOPS), for MFU
    c.debug = dict(nan_at_step=-1)  # tests: poison the latents of this step
    return c


def published_video(c: ml_collections.ConfigDict, vae: str, height: int = 480, width: int = 832,
                    frames: int = 81) -> ml_collections.ConfigDict:
    """The published recipe's data side: Wan VAE latents of 81 x 480 x 832 clips from a TFDS
    multi-view dataset, bf16 compute, fp32 master weights, dots remat."""
    c.autoencoder = dict(kind="wan", spatial=8, path=vae)
    c.data.update(source="tfds", tfds_name="multicam_video", num_frames=frames, num_cameras=frames, height=height,
                  width=width, global_batch=8, worker_count=4)
    c.model.update(dtype="bfloat16", param_dtype="float32", remat="dots", attention="auto")
    c.text = dict(kind="file", length=512, embedding="")
    c.sample.update(steps=50, shift=5.0, cfg_scale=5.0)
    return c
