"""JSON round-trippable frozen dataclass configs (model configs stored beside checkpoints), and
the range checks of the numbers every command takes."""
from __future__ import annotations

import ast
import dataclasses
import math
import types
import typing
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


# ---------------------------------------------------------------- KEY=VALUE text to typed values


def convert(text: str, want, current, key: str, what: str = "config override"):
    """``text`` as a value of type ``want`` (a type annotation; else the type of ``current``); errors name
    it ``{what} {key}={text}`` (stp-train's --set, stp-sample / stp-eval's --model-set)."""
    if want is None:
        want = type(current) if current is not None else Any
    origin = typing.get_origin(want)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(want) if a is not type(None)]
        if text.lower() in ("none", "null") and len(options) < len(typing.get_args(want)):
            return None
        errors = []
        for o in options:
            try:
                return convert(text, o, current, key, what)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0])
    if want is bool:
        low = text.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ValueError(f"{what} {key}={text}: expected a bool (true/false)")
    if want is int:
        try:
            v = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            v = None
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"{what} {key}={text}: expected an int")
        return v
    if want is float:
        try:
            v = float(text)
        except ValueError:
            raise ValueError(f"{what} {key}={text}: expected a float") from None
        if not math.isfinite(v):
            raise ValueError(f"{what} {key}={text}: expected a finite float")
        return v
    if want is str:
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            return text[1:-1]
        return text
    if origin is tuple or want is tuple or origin is list:
        try:
            v = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            v = None
        if isinstance(v, str) or v is None:  # a bare comma list of names: a,b,c
            v = tuple(x.strip() for x in text.split(",") if x.strip())
        if not isinstance(v, (list, tuple)):
            raise ValueError(f"{what} {key}={text}: expected a list, e.g. [1, 2] or a,b")
        args = typing.get_args(want)
        if args and args[-1] is not Ellipsis and len(args) != len(v):
            raise ValueError(f"{what} {key}={text}: expected {len(args)} entries")
        return tuple(v)
    return literal(text)


def literal(text: str):
    """A bool, a Python literal, else the text itself."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
