"""Outputs that appear whole or not at all: the one write-to-a-sibling-then-rename rule.

``atomic_output(path)`` yields a temporary sibling (``.NAME.partial.PID`` for files,
``NAME.partial`` for folders); when the block succeeds it replaces ``path`` (``overwrite``
must allow an existing one), when it fails the sibling is removed and ``path`` is untouched.
``check_can_create(path)`` fails at once, before any work, where ``path`` could not be written.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def _remove(p: Path):
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(path, *, folder: bool = False, overwrite: bool = True):
    out = Path(path)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another output or pass --overwrite")
    tmp = out.with_name(f"{out.name}.partial") if folder else out.with_name(f".{out.name}.partial{os.getpid()}{out.suffix}")
    _remove(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp.mkdir()
    try:
        yield tmp
        if out.exists() and folder:
            _remove(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            _remove(tmp)


def inside(path, container) -> bool:
    """Whether ``path`` is ``container`` or lies inside it (resolved; for --overwrite guards)."""
    p, c = Path(path).resolve(), Path(container).resolve()
    return p == c or c in p.parents


def check_can_create(path, what: str = "--out") -> None:
    """Fail before any work (not after it) when ``path`` could not be written: its nearest
    existing ancestor must be a folder this process can create files in. Leaves nothing behind."""
    p = Path(path).absolute()
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{what} {path}: cannot be created, {parent} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".stp_write_test_"):
            pass
    except OSError as e:
        raise ValueError(f"{what} {path}: cannot write in {parent} ({e.strerror or e})") from e
