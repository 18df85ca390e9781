"""One training loop for every minigen model, plus device, seed, preset and checkpoints.

Any model with `loss(batch) -> scalar` trains with `fit`: AdamW, linear warm-up then
cosine decay, gradient clipping, optional EMA weights, mixed precision (automatic on CUDA,
forceable on CPU so tests exercise the GPU path), a tqdm.auto bar, periodic evaluation and
checkpoints that resume exactly (minigen.checkpoints). `train_or_load` reuses a checkpoint, else the weights
minigen ships (minigen.weights), else trains, resuming an interrupted run.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from minigen.checkpoints import (
    CheckpointError,
    InterruptFlag,
    TrainingInterrupted,
    load_weights,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from minigen.files import writable_folder
from minigen.nn import eval_mode, progress_bar
from minigen.threads import THREADS_ENV, use_cpu_threads
from minigen.weights import describe, load_shipped, mismatch, shipped

PRESETS = ("smoke", "cpu", "gpu")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # name -> autocast dtype


# --- environment ---------------------------------------------------------------------


DEVICES = "cpu, cuda, cuda:N or mps"  # what pick_device accepts


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """cuda, then mps, then cpu; `device` or $MINIGEN_DEVICE overrides the choice. Anything but cpu, cuda, cuda:N
    (an index this machine has) or mps is refused with one line, before any work. On the CPU (or wherever
    $MINIGEN_THREADS is set) it also sets torch's thread count, once per process: see minigen.threads."""
    dev = _device(device)
    if dev.type == "cpu" or os.environ.get(THREADS_ENV, "").strip():  # a GPU's host threads only when asked
        use_cpu_threads()
    return dev


def _device(device: str | torch.device | None) -> torch.device:
    choice = device if device is not None else (os.environ.get("MINIGEN_DEVICE") or None)
    if choice is not None:
        where = "" if device is not None else " ($MINIGEN_DEVICE)"
        try:
            dev = torch.device(choice)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(f"device must be one of {DEVICES}, got {choice!r}{where}") from None
        if dev.type not in ("cpu", "cuda", "mps") or (dev.type != "cuda" and dev.index not in (None, 0)):
            raise ValueError(f"device must be one of {DEVICES}, got {choice!r}{where}")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {choice!r}{where} requested but CUDA is not available")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {choice!r}{where}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {choice!r}{where} requested but MPS is not available")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_name(device: torch.device | str) -> str:
    """A human-readable device name for the preset line, e.g. 'cuda (NVIDIA H100)', 'cpu (2 cores, 2 threads)'."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":  # the threads too: a time measured with one thread is not one measured with two
        threads = torch.get_num_threads()
        return f"cpu ({os.cpu_count()} cores, {threads} thread{'s' if threads > 1 else ''})"
    return device.type


def pick_precision(device: torch.device | str, precision: str | None = None) -> str:
    """Training precision: `precision` if given, else bf16 on CUDA GPUs with native bf16 (Ampere and later),
    fp16 with loss scaling on older CUDA GPUs (T4, V100: their bf16 is emulated, hence slow), fp32 on CPU and MPS."""
    if precision is not None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)} or None, got {precision!r}")
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return "fp32"


def synchronize(device: torch.device | str):
    """Wait for queued GPU work (CUDA or MPS) before reading a clock; a no-op on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed python, numpy and torch together; returns a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def preset(name: str | None = None) -> str:
    """'smoke' when MINIGEN_SMOKE=1, else 'gpu' with CUDA, else 'cpu'. `name` or $MINIGEN_PRESET overrides."""
    name = name or os.environ.get("MINIGEN_PRESET")
    if name is None:
        if os.environ.get("MINIGEN_SMOKE", "") not in ("", "0"):
            return "smoke"
        return "gpu" if torch.cuda.is_available() else "cpu"
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")
    return name


class RunClock:
    """Wall time of a notebook or script, for the `preset: ... | device: ... | N s` line."""

    def __init__(self, preset_name: str, device):
        self.preset, self.device, self.start = preset_name, torch.device(device), time.perf_counter()

    def line(self) -> str:
        return f"preset: {self.preset} | device: {device_name(self.device)} | {time.perf_counter() - self.start:.0f} s"


# --- the loop -----------------------------------------------------------------------


def lr_at(step: int, steps: int, lr: float, warmup: int, min_lr_ratio: float = 0.1) -> float:
    """Linear warm-up for `warmup` steps, then cosine decay to min_lr_ratio * lr."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def to_device(batch, device):
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def _forever(data: Iterable):
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError("the training data yielded no batch")


@torch.no_grad()
def evaluate(model: nn.Module, data: Iterable, device=None, max_batches: int | None = None) -> float:
    """Mean of model.loss over (at most max_batches of) data, in eval mode."""
    device = device or next(model.parameters()).device
    with eval_mode(model):
        total, count = 0.0, 0
        for i, batch in enumerate(data):
            if max_batches is not None and i >= max_batches:
                break
            total += float(model.loss(to_device(batch, device)))
            count += 1
    if count == 0:
        raise ValueError("evaluation data yielded no batch")
    return total / count


def fit(
    model: nn.Module,
    data: Iterable,
    *,
    steps: int,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    warmup: int | None = None,
    min_lr_ratio: float = 0.1,
    grad_clip: float | None = 1.0,
    ema_decay: float | None = None,
    eval_data: Iterable | None = None,
    eval_every: int | None = None,
    eval_batches: int = 10,
    device=None,
    precision: str | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
    checkpoint_seconds: float | None = 60.0,
    resume: bool = False,
    progress: bool = True,
    desc: str | None = None,
) -> dict:
    """Train `model` on batches from `data` (cycled) for `steps` optimizer steps.

    The learning rate warms up linearly for `warmup` steps, then follows a cosine down to
    min_lr_ratio * lr. Returns the history: {"step", "loss", "lr", "eval_step", "eval_loss", "seconds"}.
    With `checkpoint`, saves there every `checkpoint_every` steps, at least every `checkpoint_seconds` of training
    (default a minute: an interrupted run loses at most that), on Ctrl-C (after the step in progress; then raises
    TrainingInterrupted) and at the end. With `resume=True` and an existing file, continues from its step exactly:
    weights, optimizer, EMA, GradScaler, random number generators and the position in `data` are restored, so a
    run interrupted and resumed ends with the weights of an uninterrupted one (bit for bit on the CPU, when `data`
    is a minigen loader or another iterable that repeats itself; a DataLoader's seeded generator is rewound).
    With `ema_decay`, keeps an exponential moving average of the weights and leaves the
    model holding the EMA weights when training ends (they usually sample better).
    `precision` ("fp32", "bf16", "fp16"; None picks with pick_precision) runs the loss under autocast
    on whatever device trains, the CPU included, with a GradScaler for fp16. Weights stay fp32.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not hasattr(model, "loss"):
        raise TypeError(f"{type(model).__name__} has no .loss(batch) method")
    device = pick_device(device)
    model.to(device).train()
    warmup = min(100, max(1, steps // 20)) if warmup is None else warmup
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )
    ema = copy.deepcopy(model).eval().requires_grad_(False) if ema_decay else None
    history = {"step": [], "loss": [], "lr": [], "eval_step": [], "eval_loss": [], "seconds": 0.0}
    precision = pick_precision(device, precision)
    amp_dtype = PRECISIONS[precision]
    # fp16's narrow range underflows small gradients: scale the loss up, unscale before clipping and stepping
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    loader_rng = getattr(data, "generator", None)  # a DataLoader's shuffle: rewound on resume
    data_rng = loader_rng.get_state() if isinstance(loader_rng, torch.Generator) else None
    start_step = 0
    if resume and checkpoint is not None and Path(checkpoint).exists():
        state = read_checkpoint(checkpoint)
        load_weights(model, state, prefer_ema=False, path=checkpoint)
        if state.get("optimizer"):
            optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        history.update(state.get("history") or {})
        start_step = int(state["step"])
        saved = state.get("training") or {}
        if saved.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(saved["scaler"])
        if saved.get("data_rng") is not None and data_rng is not None:
            data_rng = saved["data_rng"]
            loader_rng.set_state(data_rng)
        if saved.get("rng"):
            set_rng_state(saved["rng"])
    history["precision"] = precision
    batches = _forever(data)
    for _ in range(start_step):  # the batches the interrupted run drew: the next one is the one it would draw
        next(batches)

    def save(step: int):
        training = {"steps": steps, "scaler": scaler.state_dict(), "rng": rng_state(), "data_rng": data_rng}
        save_checkpoint(checkpoint, model, step=step, optimizer=optimizer, ema=ema, history=history, training=training)

    bar = progress_bar(
        range(start_step, steps),
        progress,
        initial=start_step,
        total=steps,
        desc=desc or type(model).__name__,
        dynamic_ncols=True,
    )
    t0 = last_save = time.perf_counter()
    smooth = None
    with InterruptFlag() as interrupt:
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, steps, lr, warmup, min_lr_ratio)
            batch = to_device(next(batches), device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = model.loss(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}; try a lower lr")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                with torch.no_grad():
                    for pe, pm in zip(ema.parameters(), model.parameters()):
                        pe.lerp_(pm.detach(), 1 - ema_decay)
                    for be, bm in zip(ema.buffers(), model.buffers()):
                        be.copy_(bm)
            value = loss.item()
            smooth = value if smooth is None else 0.95 * smooth + 0.05 * value
            history["step"].append(step + 1)
            history["loss"].append(value)
            history["lr"].append(optimizer.param_groups[0]["lr"])
            postfix = {"loss": f"{smooth:.4f}"}
            if hasattr(model, "train_status"):  # e.g. a tokenizer's live codes
                postfix.update(model.train_status())
            if eval_data is not None and eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps):
                eval_model = ema if ema is not None else model
                history["eval_step"].append(step + 1)
                history["eval_loss"].append(evaluate(eval_model, eval_data, device, eval_batches))
                postfix["eval"] = f"{history['eval_loss'][-1]:.4f}"
            bar.set_postfix(postfix, refresh=False)
            now = time.perf_counter()
            due = (checkpoint_every and (step + 1) % checkpoint_every == 0) or (
                checkpoint_seconds is not None and now - last_save >= checkpoint_seconds
            )
            if checkpoint is not None and step + 1 < steps and (due or interrupt.set):
                history["seconds"] += now - t0
                t0 = last_save = now
                save(step + 1)
            if interrupt.set and step + 1 < steps:
                bar.close()
                raise TrainingInterrupted(step + 1, steps, checkpoint)
    history["seconds"] += time.perf_counter() - t0
    if progress and history["loss"]:
        print(summary_line(desc or type(model).__name__, history))
    if checkpoint is not None:
        save(steps)
    if ema is not None:
        model.load_state_dict(ema.state_dict())
    model.eval()
    return history


def summary_line(name: str, history: dict) -> str:
    """One line that says how a training run ended, e.g. for a notebook's stored output:
    'token GPT: 3000 steps in 412 s | train loss 1.2345 (mean of the last 50) | test loss 1.3012'."""
    losses = history["loss"][-50:]
    line = f"{name}: {history['step'][-1]} steps in {history.get('seconds', 0.0):.0f} s"
    line += f" | train loss {sum(losses) / len(losses):.4f} (mean of the last {len(losses)})"
    if history.get("eval_loss"):
        line += f" | test loss {history['eval_loss'][-1]:.4f}"
    return line


def training_line(name: str, history: dict, batch_size: int | None = None) -> str:
    """How long `name` trained, saying whether that happened in this run: e.g. 'token GPT: 3000 steps of batch 32
    in 320 s when the shipped weights were trained (loaded here, not retrained)'."""
    steps = history["step"][-1] if history.get("step") else "?"
    line = f"{name}: {steps} steps" + (f" of batch {batch_size}" if batch_size else "")
    line += f" in {history.get('seconds', float('nan')):.0f} s"
    origin = history.get("origin")
    if origin == "shipped":
        return line + " when the shipped weights were trained (loaded here, not retrained)"
    if origin == "checkpoint":
        return line + " when this checkpoint was trained (loaded here, not retrained)"
    return line + ", trained in this run"


def train_or_load(model: nn.Module, path, data: Iterable, **fit_kwargs) -> dict:
    """Reuse a finished checkpoint at `path` when it matches the model; else the weights minigen ships for the
    file's stem (e.g. "03_token_cpu", see minigen.weights) unless $MINIGEN_TRAIN=1; else train and save to `path`,
    resuming where an interrupted run at `path` stopped (it saves every minute and on Ctrl-C). Returns the training
    history (the shipped weights carry theirs, thinned), so loss plots work either way; its "origin" is "shipped" or
    "checkpoint" when nothing trained in this call (see `training_line`)."""
    path = Path(path)
    device, steps = fit_kwargs.get("device"), fit_kwargs.get("steps", 0)
    partial = None  # an interrupted run of this model: continued, not started over
    if path.exists():
        try:
            state = read_checkpoint(path)
            reason = mismatch(model, state.get("model"), state.get("config"))
            if reason is not None:
                raise CheckpointError(reason)
            if state["step"] >= steps:
                load_weights(model, state, prefer_ema=True, path=path)
                model.to(pick_device(device)).eval()
                history = {**(state.get("history") or {}), "origin": "checkpoint"}
                if fit_kwargs.get("progress", True) and history.get("loss"):
                    print(summary_line(f"loaded the checkpoint {path.name}", history))
                return history
            partial = int(state["step"])
        except CheckpointError as err:
            print(f"ignoring {path}: {err}")
    if partial is None and os.environ.get("MINIGEN_TRAIN", "") in ("", "0"):
        history = load_shipped(model, path.stem, min_steps=steps)
        if history is not None:  # no checkpoint is written to `path`: data/ keeps only what trained here
            model.to(pick_device(device)).eval()
            print(f"using the shipped {describe(path.stem, shipped(path.stem))}; MINIGEN_TRAIN=1 trains from scratch")
            return {**history, "origin": "shipped"}
    writable_folder(path.parent)  # before the training, not after it
    if partial is not None:
        print(f"resuming {path.name} from step {partial} of {steps} (an interrupted run)")
    try:
        return fit(model, data, checkpoint=path, resume=partial is not None, **fit_kwargs)
    except TrainingInterrupted as stop:
        print(f"{stop}; run this cell again to resume from there")
        raise
