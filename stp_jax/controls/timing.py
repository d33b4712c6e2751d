"""Animation-time schedules: which source frame each output frame shows.

A schedule for T output frames is an int array [T] of source-frame indices. Published
time modes (docs/REFERENCE.md §6.3) are defined for T = 81; here every one is written for any
T = 1 + 4k by scaling its landmarks (for T = 81 they equal the published lists). Both
published naming families are accepted: the demo scripts' (forward, pingpong, bounce_late,
freeze_mid, ...) and the evaluation sets' (normal, bounce_40, zigzag_15_21_5, fixed_10,
repeat_0to40_double, zigzag_0_10_0, ...). A pattern shorter than T is extended by cycling, a
longer one is cut. The overshooting modes (bounce_late, bounce_early: up to frame 84 of 81) are
fed to the model unclipped, as the published code does (the time embedding takes any frame
index); ``clip=True`` clips them to the source.

Parametric: ``freeze@<frame>``, ``slowmo<x>[@start-end]``, ``ramp@<frame>`` (play to
the frame, then hold), ``zigzag@<pivot>``, ``speed<x>`` (fast forward). User schedules
come from a comma list (``"0,2,4,..."``, ranges ``"0-40,40*40"``: 40 repeated 40 times)
or a file (.txt/.csv numbers, .json list, .npy).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np


class ScheduleError(ValueError):
    """A time schedule is malformed or out of range; the message says what was expected."""


# The time-axis rule, its one home: a clip has T = 1 + 4k raw frames and F = 1 + k latent frames
# (Wan's VAE folds frame 0 alone and then every 4 frames; the time embedding downsamples the same way).
TIME_FACTOR = 4


def check_frames(num_frames: int) -> int:
    """``num_frames`` if it is 1 + 4k, else a ScheduleError naming it."""
    if not isinstance(num_frames, (int, np.integer)) or num_frames < 1 or (num_frames - 1) % TIME_FACTOR:
        raise ScheduleError(f"frame count must be 1 + 4k (1, 5, ..., 81), got {num_frames}")
    return int(num_frames)


def latent_frames(num_frames: int) -> int:
    """Latent frames F of a clip of T = 1 + 4k raw frames: 1 + k."""
    return 1 + (check_frames(num_frames) - 1) // TIME_FACTOR


def raw_frames(num_latent: int) -> int:
    """Raw frames T of F latent frames: 1 + 4(F - 1)."""
    return 1 + TIME_FACTOR * (num_latent - 1)


FRAMES_PER_LATENT = (1, 2, 4)  # autoencoders: 4 = Wan's frame mapping; 1 = one latent frame per video frame


def model_times(times, frames_per_latent: int = TIME_FACTOR):
    """The DiT's animation-time input [..., 1 + 4(F - 1)] for a clip's times [..., T] encoded by an
    autoencoder of ``frames_per_latent`` raw frames per latent frame (F = 1 + (T - 1) / that).

    The DiT always reads 4 times per latent frame after the first (its TemporalDownsampler):
    with 4 frames per latent they are the clip's own times; with fewer, each raw frame's time
    is repeated 4 / frames_per_latent times. Works on numpy and jax arrays."""
    if frames_per_latent not in FRAMES_PER_LATENT:
        raise ValueError(f"frames per latent frame must be one of {FRAMES_PER_LATENT}, got {frames_per_latent}")
    if frames_per_latent == TIME_FACTOR:
        return times
    import jax.numpy as jnp

    xp = jnp if not isinstance(times, np.ndarray) else np
    return xp.concatenate([times[..., :1], xp.repeat(times[..., 1:], TIME_FACTOR // frames_per_latent, axis=-1)],
                          axis=-1)


def latent_times(times):
    """Each latent frame's animation time [..., F] from the DiT's time input [..., 1 + 4(F - 1)]:
    frame 0's own time, then the mean of each group of 4 (the frames one latent frame holds; with
    fewer frames per latent the repeats of ``model_times`` average back to the frame's time).
    Works on numpy and jax arrays."""
    t = times.shape[-1]
    if (t - 1) % TIME_FACTOR:
        raise ValueError(f"time input must have 1 + 4k frames, got {t}")
    import jax.numpy as jnp

    xp = jnp if not isinstance(times, np.ndarray) else np
    rest = times[..., 1:].reshape(*times.shape[:-1], (t - 1) // TIME_FACTOR, TIME_FACTOR)
    return xp.concatenate([times[..., :1] * 1.0, rest.mean(-1)], axis=-1)


def fit_length(pattern, num_frames: int) -> np.ndarray:
    """Cycle a shorter pattern, cut a longer one, to exactly ``num_frames`` entries."""
    p = np.asarray(pattern, np.int64).reshape(-1)
    if p.size == 0:
        raise ScheduleError("the time schedule is empty")
    return np.resize(p, num_frames)


def _r(a, b):
    """Inclusive integer range a..b, counting down when b < a."""
    return np.arange(a, b + 1) if b >= a else np.arange(a, b - 1, -1)


def _published(name: str, t: int) -> np.ndarray:
    e = t - 1  # last index (80 for T = 81)
    q1, mid, q3 = round(e / 4), e // 2, round(3 * e / 4)
    over = e + overshoot(t)  # bounce overshoot (84 for T = 81), unclipped as published
    table = {
        "forward": lambda: _r(0, e),
        "reverse": lambda: _r(e, 0),
        "pingpong": lambda: np.concatenate([_r(mid, e), _r(e, mid)]),
        "bounce_late": lambda: np.concatenate([_r(q3, over), _r(over, q1)]),
        "bounce_early": lambda: np.concatenate([_r(q1, over), _r(over, q3)]),
        "slowmo_first_half": lambda: np.concatenate([[0], np.repeat(_r(1, mid), 2)]),
        "slowmo_second_half": lambda: np.concatenate([[mid], np.repeat(_r(mid + 1, e), 2)]),
        "ramp_then_freeze": lambda: np.concatenate([_r(0, mid), np.full(t, mid)]),
        "zigzag_0_10_0": lambda: np.concatenate([_r(0, mid), _r(mid - 1, 0) if mid else []]).astype(np.int64),
        "freeze_start": lambda: np.full(t, 0),
        "freeze_early": lambda: np.full(t, q1),
        "freeze_mid": lambda: np.full(t, mid),
        "freeze_late": lambda: np.full(t, q3),
        "freeze_end": lambda: np.full(t, e),
    }
    return table[name]()


# The demo scripts' names (and zigzag_0_10_0, which only the evaluation sets name).
PUBLISHED = ("forward", "reverse", "pingpong", "bounce_late", "bounce_early", "slowmo_first_half",
             "slowmo_second_half", "ramp_then_freeze", "freeze_start", "freeze_early", "freeze_mid", "freeze_late",
             "freeze_end", "zigzag_0_10_0")
# The evaluation sets' names for the same lists (docs/REFERENCE.md §6.3). The published
# camxtime_evaluation_set also maps zigzag_0_10_0 and fixed_15 to normal; the benchmark
# (camxtime_identity_set, stp_jax.benchmark) feeds them as listed here.
EVAL_NAMES = {"normal": "forward", "bounce_40": "pingpong", "zigzag_15_21_5": "bounce_late",
              "zigzag_5_21_15": "bounce_early", "repeat_0to40_double": "slowmo_first_half",
              "start40_repeat_next": "slowmo_second_half", "go_and_freeze": "ramp_then_freeze",
              "fixed_0": "freeze_start", "fixed_5": "freeze_early", "fixed_10": "freeze_mid",
              "fixed_15": "freeze_late", "fixed_20": "freeze_end"}
ALIASES = {**EVAL_NAMES, "bullet_time": "freeze_mid", "backward": "reverse"}
OVERSHOOTING = ("bounce_late", "bounce_early")  # reach past the last source frame, unclipped


def overshoot(num_frames: int) -> int:
    """How far the bounce modes reach past the last frame: 4 for T = 81 (frames 81..84)."""
    return round((num_frames - 1) / 20)


def _parametric(name: str, t: int) -> np.ndarray | None:
    e = t - 1
    if m := re.fullmatch(r"freeze@(\d+)", name):
        return np.full(t, int(m[1]))
    if m := re.fullmatch(r"ramp@(\d+)", name):
        f = int(m[1])
        return np.concatenate([_r(0, f), np.full(t, f)])
    if m := re.fullmatch(r"zigzag@(\d+)", name):
        p = int(m[1])
        if p < 1:
            raise ScheduleError(f"time preset {name!r}: the pivot must be >= 1")
        return np.concatenate([_r(0, p), _r(p - 1, 1)])  # cycles 0..p..1, 0..p..
    if m := re.fullmatch(r"slowmo(\d+(?:\.\d+)?)(?:@(\d+)-(\d+))?", name):
        factor = float(m[1])
        if factor < 1:
            raise ScheduleError(f"time preset {name!r}: the slow-motion factor must be >= 1")
        a, b = (int(m[2]), int(m[3])) if m[2] else (0, e)
        if b < a:
            raise ScheduleError(f"time preset {name!r}: the segment end must not precede its start")
        seg = np.floor(np.arange(round((b - a + 1) * factor)) / factor).astype(np.int64) + a
        return np.concatenate([_r(0, a - 1) if a > 0 else [], seg, _r(b + 1, e)]).astype(np.int64)
    if m := re.fullmatch(r"speed(\d+(?:\.\d+)?)", name):
        factor = float(m[1])
        if factor <= 0:
            raise ScheduleError(f"time preset {name!r}: the speed factor must be > 0")
        return np.floor(np.arange(t) * factor).astype(np.int64)
    return None


def preset(name: str, num_frames: int = 81, source_frames: int | None = None, clip: bool = False) -> np.ndarray:
    """A named schedule of ``num_frames`` indices into a source of ``source_frames`` frames.

    Published modes are the published lists (bounce_late/bounce_early reach ``overshoot(T)``
    frames past the source's last one, unclipped as published); every other index out of range
    raises. ``clip=True`` clips everything to the source instead.
    """
    t = check_frames(num_frames)
    n = source_frames or t
    name = ALIASES.get(name, name)
    if name in PUBLISHED:
        extra = overshoot(t) if name in OVERSHOOTING and not clip else 0
        return validate(fit_length(_published(name, t), t), n + extra, clip=clip, name=name)
    pattern = _parametric(name, t)
    if pattern is None:
        raise ScheduleError(f"unknown time preset {name!r}; known: {', '.join(PUBLISHED)}, "
                            f"{', '.join(ALIASES)}, freeze@N, ramp@N, zigzag@N, slowmo<x>[@a-b], speed<x>")
    return validate(fit_length(pattern, t), n, clip=clip, name=name)


def validate(schedule, source_frames: int, clip: bool = False, name: str = "time schedule") -> np.ndarray:
    """Integer indices within [0, source_frames); out of range -> ScheduleError (or clipped)."""
    s = validate_numbers(schedule, name)
    if not np.issubdtype(s.dtype, np.integer):
        if not np.all(np.isfinite(s)) or not np.all(np.equal(np.mod(s, 1), 0)):
            raise ScheduleError(f"{name}: frame indices must be whole numbers")
        s = s.astype(np.int64)
    if clip:
        return np.clip(s, 0, source_frames - 1).astype(np.int64)
    bad = np.where((s < 0) | (s >= source_frames))[0]
    if bad.size:
        raise ScheduleError(f"{name}: index {int(s[bad[0]])} at position {int(bad[0])} is outside the source's "
                            f"frames 0..{source_frames - 1}")
    return s.astype(np.int64)


def validate_numbers(schedule, name: str) -> np.ndarray:
    """A 1-D numeric array of a schedule (no strings, booleans, nesting or objects)."""
    try:
        s = np.asarray(schedule)
    except ValueError as e:  # ragged nesting
        raise ScheduleError(f"{name}: expected a 1-D list of frame indices ({e})") from None
    if s.ndim != 1:
        raise ScheduleError(f"{name}: expected a 1-D list of frame indices, got shape {s.shape}")
    if s.dtype == bool or not (np.issubdtype(s.dtype, np.integer) or np.issubdtype(s.dtype, np.floating)):
        raise ScheduleError(f"{name}: expected frame indices (whole numbers), got {s.dtype.name} values")
    return s


def parse_list(text: str) -> np.ndarray:
    """'0,1,2' / '0-40,40*40' / '80-0' -> indices."""
    out = []
    for tok in (x.strip() for x in text.replace("\n", ",").split(",")):
        if not tok:
            continue
        if m := re.fullmatch(r"(\d+)\s*-\s*(\d+)", tok):
            out.extend(_r(int(m[1]), int(m[2])).tolist())
        elif m := re.fullmatch(r"(\d+)\s*\*\s*(\d+)", tok):
            out.extend([int(m[1])] * int(m[2]))
        elif re.fullmatch(r"\d+", tok):
            out.append(int(tok))
        else:
            raise ScheduleError(f"time schedule item {tok!r} is not an index, a range 'a-b' or a repeat 'i*n'")
    if not out:
        raise ScheduleError("the time schedule is empty")
    return np.asarray(out, np.int64)


def load_schedule(path) -> np.ndarray:
    p = Path(path)
    if not p.exists():
        raise ScheduleError(f"{p}: time schedule file not found")
    try:
        if p.suffix == ".npy":
            return np.asarray(np.load(p, allow_pickle=False)).reshape(-1)
        if p.suffix == ".json":
            data = json.loads(p.read_text())
            data = data.get("schedule", data) if isinstance(data, dict) else data
            if not isinstance(data, list):
                raise ScheduleError(f"{p}: expected a JSON list of frame indices (or {{'schedule': [...]}}), "
                                    f"got {type(data).__name__}")
            return validate_numbers(data, f"{p}")
        return parse_list(p.read_text())
    except ScheduleError as e:
        if str(p) in str(e):
            raise
        raise ScheduleError(f"{p}: {e}") from None
    except (ValueError, OSError) as e:
        raise ScheduleError(f"{p}: not a readable time schedule ({e})") from e


def schedule_from_arg(arg: str, num_frames: int, source_frames: int | None = None, clip: bool = False) -> np.ndarray:
    """A CLI --time value: preset name, comma list, or file; exactly num_frames long."""
    t = check_frames(num_frames)
    n = source_frames or t
    if Path(arg).suffix in (".npy", ".json", ".txt", ".csv") or "/" in arg:
        s = load_schedule(arg)
    elif re.fullmatch(r"[\d\s,*\-]+", arg) and ("," in arg or "-" in arg or "*" in arg):
        s = parse_list(arg)
    else:
        return preset(arg, t, n, clip=clip)
    if len(s) != t:
        raise ScheduleError(f"time schedule {arg!r} has {len(s)} entries but the clip has {t} frames")
    return validate(s, n, clip=clip, name=f"time schedule {arg!r}")
