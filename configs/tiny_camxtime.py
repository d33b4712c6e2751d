"""The embedded default: a small SpaceTimePilot DiT on procedural Cam×Time scenes.

No downloads, no weights: the PatchAutoencoder stands in for the Wan VAE and the text
condition is null. 24x24 clips of 17 frames. The layout is chosen for what a small model can
learn in minutes (docs/LEARNING.md):
- one latent frame per video frame (``time_factor=1``): with Wan's 4-frame fold, retiming
  inside a latent frame is a schedule-dependent permutation of channels, which a small DiT
  does not learn in CPU minutes; per-frame latents make retiming a matter of attention;
- 4x4-pixel folds, 2x2 patches: 192-value tokens (one frame's 8x8 pixels) through a 128-wide
  stream, whose best linear projection keeps ~34 dB (a 768-value token kept 27 dB: below the
  trivial baselines);
- relative attention (ours, not the published model's; docs/LEARNING.md §7-8): RoPE's frame
  coordinate is the animation time (``rope_frames="time"``: a target token and the source token
  at the same time share RoPE angles, and the copy by time appears by step 600 instead of
  ~1200), and in 2 of the 4 heads the frame dims carry the camera pose instead (``cam_heads=2``:
  tokens filmed from one camera meet unrotated; camera error 1.7 -> 0.6 at equal steps);
  RoPE theta 100 instead of 10 000: over 17 frames and a 6x6 token grid every frequency pair turns
  (at 10 000 only the first two did), and both controls come sooner (docs/LEARNING.md §10);
- a copy of the source in the output (``copy_source``, ours; docs/LEARNING.md §13): the clean-sample
  prediction is the head's output plus source tokens chosen by one more attention over the last
  hidden states, so a copied token keeps all of its 192 values, where the 128-wide stream carried
  only its first ~70 principal components (the blur of docs/LEARNING.md §11); pure retiming goes
  from ~24 dB to ~40-49 dB, and camera error falls sooner;
- a 2.5D composite in the output (``copy_composite=4``, ours; docs/LEARNING.md §19-20, §24-25): per-pixel
  depth and moving-mask heads (32 wide, ``composite_width``), supervised by the renderer's
  (``data.composite_aux``, ``flow.composite_loss``), put the moving pixels of the source frame at the requested
  time, forward-warped by their depth, over the static pixels of the camera-matched frame; wherever that moved
  a pixel the output takes it (``composite_gate="moved"``; a learned gate hedged, §19). The moving layer is
  splatted from 2x2 points per pixel (``composite_splat=2``, §25): an object seen larger than in its source
  frame lands whole instead of with holes. The time errors of a moving source fall by 43-66%, for
  0.2-1.2 dB of PSNR and 1.35x the step time (a 64-wide head: 985 s for 1400 steps, over the demo's limit).
  The head's convolutions also see each pixel's change to the frames 1, 2 and 4 away and to the clip's
  temporal median (``composite_temporal``, §27): over three seeds SSIM is higher on every case with a moving
  source, PSNR on 29 of 33 seed-case pairs, the mean time errors lower on 9 of 11 cases, at the same step time;
  a moved pixel wins over the static layer's fill where its depth reads up to 1.5x the fill's
  (``composite_margin``, §27-28; 1.05 before): the head reads objects a little farther than they are, and at 1.05
  they dropped out; pure retiming +5 dB, PSNR higher on 30 of 33 seed-case pairs with a moving source;
  where the output takes the composite it is the composite's pixels alone (``composite_residual=False``, §29): the
  head's output added there barely moved the squared error and put a grey level or two of noise on every pixel the
  composite has exactly (0.2-0.55 dB of per-frame PSNR; pure retiming 6 dB); with the composite's rule that a
  target cell which is a source frame's own (camera and time) is that frame. On 128 held-out scenes with paired
  margins (§30), bullet time and slow motion along the source's camera beat every baseline clearly (PSNR +0.31 /
  +0.37 ± 0.11 dB); slow motion and zigzag at a fixed camera and the last view held are level on PSNR, better on
  SSIM/LPIPS; reverse and bullet time at a fixed camera and reverse along the source's camera are clearly below;
- x0 prediction, noise levels drawn uniformly (the nearly clean end is trained too);
- pairs that teach the controls: fixed-camera pairs (only time differs), target camera paths
  that start anywhere (conditioned relative to the source's first camera), time warps that
  rarely leave time as it was;
- a curriculum (``data.fixed_camera_steps``): fixed-camera pairs only for the first 300 steps,
  where the copy by animation time forms (by step ~300 with the source copy), then a mix with 70%
  fixed-camera pairs. The share trades the two controls against each other at this budget (40%:
  camera, no time; 70%: time kept, some camera; docs/LEARNING.md §8). Learning rate 2e-3 (the copy forms sooner than at
  1e-3 or 4e-3, §6).
Trains 1400 steps on 2 CPU cores in about 10 minutes at ~2.4 steps/s (600 s from a clean clone here; a slower
machine stops at the 10-minute limit before step 1400; the cosine is then near its end). Before the composite:
7.5-8 minutes at ~3 steps/s, and the camera error of the last view held 0.92 after 1400 steps (0.23 with it; 1.18
after 927 of the previous 1000, docs/LEARNING.md §17).

Variants: ``smoke`` (a few steps of a smaller model, for tests), ``long`` (the same recipe for
4000 steps, ~28 minutes at 2.4 steps/s on 2 CPU cores; docs/LEARNING.md §31: paired with the demo's 1400 steps on 32
scenes, PSNR +0.09 to +0.35 dB on every moving-source case and time errors 0.4-1.1 frames lower on reverse, slow
motion and zigzag along the source's camera and on the camera cases; on 128 scenes it clearly beats every baseline
on slow motion and zigzag at a fixed camera and bullet time and slow motion along the source's camera).
"""
from stp_jax.config import apply_variants, base

TIME_WARPS = (("forward", 0.1), ("backward", 0.2), ("boomerang", 0.1), ("zigzag", 0.15), ("slow_global", 0.1),
              ("slow_segment", 0.1), ("fixed_frame", 0.15), ("freeze", 0.1))
CAMERA_PATHS = (("static", 0.2), ("sweep", 0.2), ("fast_sweep", 0.15), ("half_sweep", 0.15), ("reverse_sweep", 0.15),
                ("hold", 0.15))


def _smoke(c):
    c.total_steps, c.time_limit_minutes, c.log_every, c.checkpoint_every = 4, 0.0, 1, 2
    c.model.update(num_layers=2, dim=64, ffn_dim=128)
    c.data.update(source="procedural", global_batch=4, worker_count=0)
    c.eval.num_scenes, c.sample.steps = 1, 2


def _long(c):  # the default's recipe, 4000 steps (docs/LEARNING.md §25)
    c.total_steps, c.time_limit_minutes, c.eval_every = 4000, 0.0, 1000


def get_config(variants=None):
    c = base("tiny_camxtime", "tiny", mode="spacetimepilot", dim=128, ffn_dim=512, num_heads=4, num_layers=4,
             in_channels=48, out_channels=48, text_dim=32, freq_dim=64, time_groups=16, patch_size=(1, 2, 2),
             attention="xla", rope_frames="time", cam_heads=2, rope_theta=100.0, copy_source=True,
             copy_composite=4, composite_gate="moved", composite_width=32, composite_splat=2,
             composite_temporal=True, composite_margin=1.5, composite_residual=False)
    c.autoencoder.update(kind="patch", spatial=4, time_factor=1)
    # 500 scenes rendered once into ArrayRecord (about 2 minutes), then read at hundreds of clips/s
    c.data.update(source="tfds", tfds_name="camxtime_procedural", num_scenes=500, worker_count=1, height=24, width=24,
                  global_batch=4, warp_probs=TIME_WARPS, camera_paths=CAMERA_PATHS, fixed_camera_pairs=0.7,
                  fixed_camera_steps=300, composite_aux=True)
    c.flow.update(prediction="x0", timestep_mode="uniform_sigma", shift=1.0, composite_loss=0.1, composite_gate_loss=0.05)
    c.total_steps = 1400  # the cosine schedule ends here: ~10 minutes at the ~2.4 steps/s of a 2-core machine
    # (docs/LEARNING.md §17: camera control within 1 index on both camera cases; 927 steps left the last view at 1.18)
    c.time_limit_minutes = 10.0  # of training: stops slower machines; the demo's whole run stays under 15 minutes
    c.optim.update(lr=2e-3, warmup=100, b2=0.99)
    c.log_every, c.checkpoint_every, c.keep_checkpoints = 100, 500, 2
    c.eval_every = 0
    # 2 sampling steps: as good as 8 on quality and time error, better on camera error, in a quarter of the time;
    # the x0 model's estimate from pure noise is already close to its best (docs/LEARNING.md §11)
    c.sample.update(steps=2, shift=3.0, cfg_scale=1.0)
    return apply_variants(c, variants, {"smoke": _smoke, "long": _long})
