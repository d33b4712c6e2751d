"""JSON round-trippable frozen dataclass configs (model configs stored beside checkpoints)."""
from __future__ import annotations

import dataclasses
from typing import Any


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
