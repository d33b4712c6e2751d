"""Training checkpoints: Orbax ``CheckpointManager`` (async, keep N) holding the TrainState,
the Grain iterator state and the config, with a restore that falls back past damaged steps.

  workdir/checkpoints/<step>/{state, data, config}
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """No checkpoint could be written or restored; the message says where and why."""


def _abs(path) -> str:
    """Local paths made absolute; gs:// (and other URLs) as they are."""
    s = str(path)
    return s if "://" in s else str(Path(s).absolute())


def check_writable(directory) -> None:
    """Fail at once (not minutes later inside an async save) when ``directory`` cannot be written."""
    d = _abs(directory)
    if "://" in d:
        return
    try:
        os.makedirs(d, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d, prefix=".write_test_"):
            pass
    except OSError as e:
        raise CheckpointError(f"checkpoint directory {d} is not writable ({e.strerror or e})") from e


def manager(workdir, keep: int) -> ocp.CheckpointManager:
    check_writable(Path(workdir) / "checkpoints")
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
    return ocp.CheckpointManager(_abs(workdir) + "/checkpoints", options=opts)


def save(mngr: ocp.CheckpointManager, step: int, state, data_iter, config, force: bool = False) -> bool:
    import grain

    try:
        return mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter),
            config=ocp.args.JsonSave(config.to_dict())), force=force)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"saving checkpoint {step} in {mngr.directory} failed ({type(e).__name__}: {e})") from e


def wait(mngr: ocp.CheckpointManager) -> None:
    """Block until async saves are on disk; an async failure becomes a CheckpointError."""
    try:
        mngr.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - Orbax re-raises whatever the writer thread hit
        raise CheckpointError(f"a checkpoint write in {mngr.directory} failed ({type(e).__name__}: {e})") from e


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, data_iter, log=print):
    """(step, state) of the newest checkpoint that restores, newest first; damaged ones are
    skipped with a line saying which and why. (None, None) when there is none."""
    import grain

    steps = sorted(mngr.all_steps(), reverse=True)
    for step in steps:
        try:
            r = mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=grain.checkpoint.CheckpointRestore(data_iter)))
            return step, r.state
        except Exception as e:  # noqa: BLE001 - any unreadable step is skipped, loudly
            log(f"checkpoint {step} in {mngr.directory} cannot be restored ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200]}); trying an older one")
    if steps:
        raise CheckpointError(f"no checkpoint in {mngr.directory} could be restored (tried steps {steps}); "
                              "move the damaged checkpoints away to start afresh")
    return None, None
