import random

import numpy as np
import pytest
import torch

from minigen.data import BinaryPatterns, make_loader
from minigen.pixel_ar import PixelGPT, PixelGPTConfig
from minigen.registry import load_model
from minigen.train import (
    CheckpointError,
    fit,
    lr_at,
    pick_device,
    preset,
    read_checkpoint,
    save_checkpoint,
    seed_everything,
    train_or_load,
)


def tiny_model(**kw):
    cfg = dict(image_size=3, n_classes=0, n_layer=1, n_head=2, n_embd=16)
    cfg.update(kw)
    return PixelGPT(PixelGPTConfig(**cfg))


def tiny_data():
    return make_loader(BinaryPatterns(size=3, n_patterns=4).dataset(256), 32)


def test_pick_device_and_override(monkeypatch):
    monkeypatch.delenv("MINIGEN_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert pick_device().type == expected
    monkeypatch.setenv("MINIGEN_DEVICE", "cpu")
    assert pick_device().type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            pick_device("cuda")


def test_preset_follows_environment(monkeypatch):
    monkeypatch.delenv("MINIGEN_PRESET", raising=False)
    monkeypatch.setenv("MINIGEN_SMOKE", "1")
    assert preset() == "smoke"
    monkeypatch.setenv("MINIGEN_SMOKE", "0")
    assert preset() == ("gpu" if torch.cuda.is_available() else "cpu")
    assert preset("gpu") == "gpu"
    with pytest.raises(ValueError, match="preset"):
        preset("huge")


def test_seed_everything_seeds_all_three():
    seed_everything(7)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(7)
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())


def test_lr_schedule_warms_up_then_decays():
    lrs = [lr_at(s, 100, 1.0, warmup=10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1, abs=0.01)


def test_checkpoint_round_trip_and_load_model(tmp_path):
    torch.manual_seed(0)
    model = tiny_model()
    history = fit(model, tiny_data(), steps=5, progress=False, checkpoint=tmp_path / "m.pt")
    assert len(history["loss"]) == 5
    state = read_checkpoint(tmp_path / "m.pt")
    assert state["step"] == 5 and state["config"]["image_size"] == 3
    loaded = load_model(tmp_path / "m.pt", device="cpu")
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a.cpu(), b)


def test_corrupt_and_mismatched_checkpoints_raise_clear_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(bad)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_model(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a minigen checkpoint"):
        read_checkpoint(tmp_path / "foreign.pt")
    good = tmp_path / "good.pt"
    save_checkpoint(good, tiny_model())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(truncated)
    # a checkpoint of another config does not silently load into this model
    history = train_or_load(tiny_model(n_embd=32), good, tiny_data(), steps=2, progress=False)
    assert len(history["loss"]) == 2  # it retrained instead


def test_resume_continues_where_it_stopped(tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "run.pt"
    fit(tiny_model(), tiny_data(), steps=6, progress=False, checkpoint=ckpt, checkpoint_every=3)
    torch.manual_seed(0)
    model = tiny_model()
    save_checkpoint(
        ckpt,
        model,
        step=3,
        history={
            "step": [1, 2, 3],
            "loss": [1.0, 1.0, 1.0],
            "lr": [0, 0, 0],
            "eval_step": [],
            "eval_loss": [],
            "seconds": 0.0,
        },
    )
    history = fit(model, tiny_data(), steps=6, progress=False, checkpoint=ckpt, resume=True)
    assert history["step"] == [1, 2, 3, 4, 5, 6]
    assert read_checkpoint(ckpt)["step"] == 6


def test_train_or_load_reuses_a_finished_checkpoint(tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "m.pt"
    first = tiny_model()
    train_or_load(first, ckpt, tiny_data(), steps=4, progress=False)
    second = tiny_model()
    history = train_or_load(second, ckpt, tiny_data(), steps=4, progress=False)
    assert len(history["loss"]) == 4
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)


def test_fit_with_ema_and_eval_lowers_the_loss_toward_the_entropy():
    torch.manual_seed(0)
    patterns = BinaryPatterns(size=3, n_patterns=4, flip=0.0)
    data = make_loader(patterns.dataset(2048), 64)
    model = tiny_model(n_embd=32)
    history = fit(model, data, steps=300, lr=3e-3, ema_decay=0.9, eval_data=data, eval_every=100, progress=False)
    assert history["eval_step"] == [100, 200, 300]
    per_pixel_entropy = patterns.entropy() / 9
    assert history["loss"][0] > 0.6  # starts near log 2 per pixel
    assert history["eval_loss"][-1] < per_pixel_entropy + 0.05


def test_fit_rejects_models_without_loss():
    with pytest.raises(TypeError, match="loss"):
        fit(torch.nn.Linear(2, 2), [], steps=1)
