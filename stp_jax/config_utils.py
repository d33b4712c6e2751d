"""JSON round-trippable frozen dataclass configs (model configs stored beside checkpoints), and
the range checks of the numbers every command takes."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np


class JsonConfig:
    """Mixin for frozen dataclasses: replace / to_dict / from_dict.

    Tuples are written as JSON lists and read back as tuples (by the field's default);
    unknown fields are an error naming them.
    """

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(d) - set(fields)
        if unknown:
            raise ValueError(f"{cls.__name__} got unknown fields {sorted(unknown)}; known: {sorted(fields)}")
        return cls(**{k: tuple(v) if isinstance(fields[k].default, tuple) and isinstance(v, list) else v
                      for k, v in d.items()})


# ---------------------------------------------------------------- argument checks
# Every command checks its numbers before any work, with one message naming the input.


def check_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (a bool or a fractional number is not one); ``name``
    (e.g. ``--steps``) is the input the ValueError names."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) and not (
            isinstance(value, (float, np.floating)) and float(value).is_integer()):
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {int(value)}")
    return int(value)


def check_float(name: str, value, positive: bool = False) -> float:
    """``value`` as a finite float (> 0 when ``positive``): NaN and Inf are never a setting."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or positive and v <= 0:
        raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}, got {v}")
    return v
