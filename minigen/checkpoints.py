"""Checkpoints: everything a training run needs to survive an interrupt and go on as if it had not stopped.

A checkpoint is plain data (state dicts, the config as a dict, numbers, tensors), written atomically and read
back with torch.load(weights_only=True), so loading one never runs code. Beyond the weights it holds the
optimizer, the EMA weights, the history and, for `fit(..., resume=True)`, the GradScaler's state and every random
number generator's, which is what makes a resumed run end bit for bit where an uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
import random
import signal
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from minigen.files import write_atomically
from minigen.weights import mismatch, model_key

CHECKPOINT_FORMAT = "minigen-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, or does not fit the model."""


def save_checkpoint(
    path,
    model: nn.Module,
    *,
    step: int = 0,
    optimizer=None,
    ema: nn.Module | None = None,
    history: dict | None = None,
    extra: dict | None = None,
    training: dict | None = None,
):
    """torch.save of plain data only (state dicts, config dict, numbers), written atomically. `training` is what
    fit needs to resume exactly: the planned steps, the GradScaler's state and the random number generators'."""
    path = Path(path)
    config = getattr(model, "config", None)
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": model_key(model),
        "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None,
        "state_dict": model.state_dict(),
        "step": int(step),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "history": history or {},
        "extra": extra or {},
        "training": training or {},
    }
    write_atomically(path, lambda tmp: torch.save(state, tmp))


def read_checkpoint(path) -> dict:
    """Load a checkpoint dict with weights_only=True; any damage becomes a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise CheckpointError(f"cannot read the checkpoint {path}: {err.strerror or err}") from err
    except Exception as err:  # torch's message suggests weights_only=False: wrong advice for a damaged file
        first = (str(err).splitlines() or [""])[0].removeprefix("Weights only load failed. ")
        raise CheckpointError(
            f"{path} is not a minigen checkpoint: it is corrupt, or not a file torch.save wrote with plain data only "
            f"({type(err).__name__}: {first[:120]})"
        ) from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a minigen checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    return state


def load_weights(model: nn.Module, state: dict, prefer_ema: bool = True, path="checkpoint"):
    """Load a checkpoint dict's weights (the EMA ones if asked and present) into a model of its key and config."""
    reason = mismatch(model, state.get("model"), state.get("config"))
    if reason is not None:
        raise CheckpointError(f"{path} {reason}")
    weights = state["ema"] if prefer_ema and state.get("ema") else state["state_dict"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit this model (different config?): {err}") from err


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during fit: the last finished step was saved to the checkpoint, and fit(..., resume=True) continues
    from it exactly."""

    def __init__(self, step: int, steps: int, checkpoint):
        self.step, self.steps, self.checkpoint = step, steps, checkpoint
        saved = f"saved {checkpoint}" if checkpoint is not None else "nothing saved (no checkpoint path given)"
        super().__init__(f"interrupted at step {step} of {steps}: {saved}")


def rng_state() -> dict:
    """Every random number generator training draws from (torch, CUDA, numpy, random), as plain data that
    torch.load(weights_only=True) reads back."""
    version, keys, gauss = random.getstate()
    kind, mt, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(mt.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "gauss": cached},
        "random": {"version": version, "keys": torch.tensor(keys, dtype=torch.int64), "gauss": gauss},
    }


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    r = state["random"]
    random.setstate((r["version"], tuple(int(k) for k in r["keys"]), r["gauss"]))


class InterruptFlag:
    """While fit runs in the main thread, Ctrl-C sets a flag that the loop reads after each finished step, so the
    checkpoint it saves is never half a step; a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.set = False
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and callable(signal.getsignal(signal.SIGINT)):
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.set:  # the second Ctrl-C: do not wait for the step to end
            signal.signal(signal.SIGINT, self.previous)
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False
