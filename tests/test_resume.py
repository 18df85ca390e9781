"""Training survives an interrupt: Ctrl-C saves the last finished step, a resumed run ends with exactly the weights
of an uninterrupted one (fp32 and forced mixed precision, on the CPU), fit checkpoints every minute by default, and
train_or_load continues an interrupted run instead of starting over."""

import os
import signal

import pytest
import torch

from minigen import registry
from minigen.data import load_images, make_loader
from minigen.train import TrainingInterrupted, fit, read_checkpoint, seed_everything, train_or_load

STEPS = 12


def setup(name: str):
    """A smoke model of `name`, its seeded loader and fit's settings, built as a fresh process would."""
    recipe = registry.recipe(name, "smoke")
    loader = make_loader(load_images(**recipe["data"], limit=64), 16, seed=3)
    return recipe["model"], loader


def interrupt_at(model, call: int):
    """Ctrl-C (a real SIGINT) during the `call`-th loss computation."""
    loss, calls = model.loss, []

    def loss_then_interrupt(batch):
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGINT)
        return loss(batch)

    model.loss = loss_then_interrupt


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("name", ["pixelgpt", "maskgit"])  # maskgit draws its masks from the RNG in every loss
def test_an_interrupted_then_resumed_run_ends_bit_identical(tmp_path, name, precision):
    kwargs = dict(steps=STEPS, lr=3e-3, ema_decay=0.9, precision=precision, device="cpu", progress=False)
    seed_everything(0)
    model, loader = setup(name)
    fit(model, loader, checkpoint=tmp_path / "whole.pt", **kwargs)
    whole = read_checkpoint(tmp_path / "whole.pt")

    seed_everything(0)
    model, loader = setup(name)
    interrupt_at(model, 6)
    with pytest.raises(TrainingInterrupted, match=f"interrupted at step 6 of {STEPS}"):
        fit(model, loader, checkpoint=tmp_path / "part.pt", **kwargs)
    assert read_checkpoint(tmp_path / "part.pt")["step"] == 6  # the step in progress finished, then it saved

    seed_everything(99)  # a new session: other random state, a fresh model and loader
    model, loader = setup(name)
    fit(model, loader, checkpoint=tmp_path / "part.pt", resume=True, **kwargs)
    resumed = read_checkpoint(tmp_path / "part.pt")
    assert resumed["step"] == STEPS and resumed["history"]["step"] == list(range(1, STEPS + 1))
    for key in ("state_dict", "ema"):
        for k, v in whole[key].items():
            assert torch.equal(v, resumed[key][k]), f"{key}.{k} differs after resuming"
    assert resumed["history"]["loss"] == whole["history"]["loss"]


def test_fit_checkpoints_periodically_by_default(tmp_path, monkeypatch):
    seed_everything(0)
    model, loader = setup("pixelgpt")
    loss, calls = model.loss, []

    def failing_loss(batch):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("the machine went away")
        return loss(batch)

    model.loss = failing_loss
    with pytest.raises(RuntimeError, match="went away"):
        fit(model, loader, steps=STEPS, checkpoint=tmp_path / "m.pt", checkpoint_seconds=0.0, progress=False)
    assert read_checkpoint(tmp_path / "m.pt")["step"] == 4  # every finished step was saved (seconds=0)


def test_train_or_load_resumes_an_interrupted_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIGEN_TRAIN", "1")
    kwargs = dict(steps=STEPS, lr=3e-3, device="cpu", progress=False)
    seed_everything(0)
    model, loader = setup("pixelgpt")
    interrupt_at(model, 4)
    with pytest.raises(KeyboardInterrupt):
        train_or_load(model, tmp_path / "00_pixelgpt_smoke.pt", loader, **kwargs)
    out = capsys.readouterr().out
    assert f"interrupted at step 4 of {STEPS}" in out and "run this cell again to resume" in out
    model, loader = setup("pixelgpt")
    train_or_load(model, tmp_path / "00_pixelgpt_smoke.pt", loader, **kwargs)
    assert f"resuming 00_pixelgpt_smoke.pt from step 4 of {STEPS}" in capsys.readouterr().out
    assert read_checkpoint(tmp_path / "00_pixelgpt_smoke.pt")["step"] == STEPS


def test_train_or_load_checks_the_folder_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGEN_TRAIN", "1")
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    model, loader = setup("pixelgpt")
    with pytest.raises(NotADirectoryError, match="not-a-folder"):
        train_or_load(model, a_file / "00_pixelgpt_smoke.pt", loader, steps=STEPS, device="cpu", progress=False)


def test_the_loss_scale_survives_the_interrupt(tmp_path, monkeypatch):
    """fp16's GradScaler skips steps whose gradients overflow and halves its scale: a resumed run must skip the
    same steps, so its scale is saved. A scale that doubles every step overflows often enough to tell."""

    class EagerScaler(torch.amp.GradScaler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, init_scale=2.0**14, growth_interval=1, **kwargs)

    monkeypatch.setattr(torch.amp, "GradScaler", EagerScaler)
    kwargs = dict(steps=STEPS, lr=3e-3, precision="fp16", device="cpu", progress=False)
    seed_everything(0)
    model, loader = setup("pixelgpt")
    fit(model, loader, checkpoint=tmp_path / "whole.pt", **kwargs)
    whole = read_checkpoint(tmp_path / "whole.pt")
    assert whole["training"]["scaler"]["scale"] < 2.0 ** (14 + STEPS)  # some steps overflowed and were skipped
    seed_everything(0)
    model, loader = setup("pixelgpt")
    interrupt_at(model, 6)
    with pytest.raises(TrainingInterrupted):
        fit(model, loader, checkpoint=tmp_path / "part.pt", **kwargs)
    model, loader = setup("pixelgpt")
    fit(model, loader, checkpoint=tmp_path / "part.pt", resume=True, **kwargs)
    resumed = read_checkpoint(tmp_path / "part.pt")
    assert resumed["training"]["scaler"]["scale"] == whole["training"]["scaler"]["scale"]
    assert all(torch.equal(v, resumed["state_dict"][k]) for k, v in whole["state_dict"].items())
