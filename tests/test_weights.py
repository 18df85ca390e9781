"""Shipped weights: export, lookup, loading through train_or_load, and every way a shipped file can be wrong."""

import json

import pytest
import torch

import minigen.train
from minigen import cli, registry, weights
from minigen.data import BinaryPatterns, make_loader
from minigen.pixel_ar import PixelGPT, PixelGPTConfig
from minigen.registry import load_model_shipped
from minigen.tokenizers import VQVAE, VQConfig
from minigen.train import fit, read_checkpoint, save_checkpoint, train_or_load, training_line

STEPS = 8


def gpt(**kw):
    return PixelGPT(PixelGPTConfig(**dict(dict(image_size=4, n_classes=0, n_layer=1, n_head=2, n_embd=16), **kw)))


def vq(**kw):
    return VQVAE(VQConfig(**dict(dict(image_size=4, channels=8, n_res=1, latent_dim=4, n_codes=8), **kw)))


def data():
    return make_loader(BinaryPatterns(size=4, n_patterns=4).dataset(64), 16)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two finished checkpoints as the notebooks write them (EMA weights, optimizer state, history)."""
    folder = tmp_path_factory.mktemp("data")
    for stem, make in (("00_gpt_cpu", gpt), ("02_vq_cpu", vq)):
        torch.manual_seed(0)
        fit(make(), data(), steps=STEPS, ema_decay=0.9, progress=False, checkpoint=folder / f"{stem}.pt")
    return folder


@pytest.fixture
def shipped_dir(checkpoints, tmp_path, monkeypatch):
    """A weights folder holding both exported models; $MINIGEN_WEIGHTS_DIR points at it."""
    out = tmp_path / "pretrained"
    monkeypatch.setenv("MINIGEN_WEIGHTS_DIR", str(out))
    monkeypatch.delenv("MINIGEN_TRAIN", raising=False)
    weights.export(sorted(checkpoints.glob("*.pt")), out, trained_on="2 CPU cores")
    return out


@pytest.fixture
def no_fit(monkeypatch):
    """Training raises: proves a model came from the shipped weights."""

    def refuse(*args, **kwargs):
        raise AssertionError("fit() was called")

    monkeypatch.setattr(minigen.train, "fit", refuse)


def test_export_keeps_weights_only_in_half_precision(checkpoints, shipped_dir):
    manifest = json.loads((shipped_dir / weights.MANIFEST).read_text())
    assert sorted(manifest) == ["00_gpt_cpu", "02_vq_cpu"]
    for stem, entry in manifest.items():
        state = read_checkpoint(checkpoints / f"{stem}.pt")
        file = shipped_dir / entry["file"]
        assert entry["sha256"] == weights.sha256(file) and entry["step"] == STEPS and entry["dtype"] == "float16"
        stored = torch.load(file, weights_only=True)  # plain tensors: loads with weights_only
        assert stored.keys() == state["ema"].keys()  # the EMA weights, no optimizer state
        for k, v in stored.items():
            assert v.dtype == (torch.float16 if state["ema"][k].is_floating_point() else state["ema"][k].dtype)
            torch.testing.assert_close(v.float(), state["ema"][k].float(), atol=1e-3, rtol=1e-3)
        fp32_bytes = sum(v.numel() * v.element_size() for v in state["ema"].values())
        assert sum(v.numel() * v.element_size() for v in stored.values()) < 0.51 * fp32_bytes
        assert file.stat().st_size < 0.6 * (checkpoints / f"{stem}.pt").stat().st_size
    assert not [p.name for p in shipped_dir.iterdir() if p.name.startswith(".")]  # atomic writes leave no temporary


def test_history_is_thinned_but_keeps_eval_and_seconds():
    history = {"step": list(range(1, 1001)), "loss": [float(i) for i in range(1000)], "lr": [0.1] * 1000}
    history.update(eval_step=[500, 1000], eval_loss=[2.0, 1.0], seconds=12.5, precision="fp32")
    thin = weights.thin(history, points=300)
    assert len(thin["step"]) == len(thin["loss"]) == len(thin["lr"]) == 300
    assert thin["step"][-1] == 1000 and thin["loss"][0] == pytest.approx(1.0)  # the mean of the first bin
    assert {k: thin[k] for k in ("eval_step", "eval_loss", "seconds", "precision")} == {
        "eval_step": [500, 1000],
        "eval_loss": [2.0, 1.0],
        "seconds": 12.5,
        "precision": "fp32",
    }


def test_train_or_load_uses_the_shipped_weights(checkpoints, shipped_dir, no_fit, tmp_path, capsys):
    for stem, make in (("00_gpt_cpu", gpt), ("02_vq_cpu", vq)):
        model = make()
        history = train_or_load(model, tmp_path / f"{stem}.pt", data(), steps=STEPS, device="cpu")
        line = capsys.readouterr().out
        assert f"using the shipped cpu-preset weights {stem} (trained {STEPS} steps" in line
        assert "on 2 CPU cores" in line and "MINIGEN_TRAIN=1" in line
        assert history == {**weights.shipped(stem)["history"], "origin": "shipped"} and len(history["loss"]) == STEPS
        said = training_line("model", history, batch_size=8)
        assert said.startswith(f"model: {STEPS} steps of batch 8 in ") and "shipped weights" in said
        assert "not retrained" in said
        assert not (tmp_path / f"{stem}.pt").exists()  # data/ keeps only what trained here
        assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
        reference = make()
        reference.load_state_dict(read_checkpoint(checkpoints / f"{stem}.pt")["ema"])
        images = next(iter(data()))[0]
        with torch.no_grad():
            if stem.startswith("00"):
                tokens = model.to_tokens(images)
                torch.testing.assert_close(model(tokens), reference.eval()(tokens), atol=2e-2, rtol=2e-2)
                samples = [model.sample(4, generator=torch.Generator().manual_seed(1)) for _ in range(2)]
                assert torch.equal(*samples)
            else:
                assert torch.equal(model.encode(images), reference.eval().encode(images))
                torch.testing.assert_close(model(images)[0], reference(images)[0], atol=2e-2, rtol=2e-2)
    rebuilt = load_model_shipped("00_gpt_cpu", "cpu")
    assert rebuilt is not None and rebuilt.config == gpt().config and not rebuilt.training


def test_minigen_train_trains_instead(shipped_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIGEN_TRAIN", "1")
    history = train_or_load(gpt(), tmp_path / "00_gpt_cpu.pt", data(), steps=3, progress=False)
    assert len(history["loss"]) == 3 and "shipped" not in capsys.readouterr().out
    assert (tmp_path / "00_gpt_cpu.pt").exists()
    assert training_line("gpt", history).endswith(", trained in this run")


def test_a_finished_checkpoint_still_comes_first(shipped_dir, tmp_path, capsys):
    ckpt = tmp_path / "00_gpt_cpu.pt"
    fit(gpt(), data(), steps=STEPS, progress=False, checkpoint=ckpt)
    history = train_or_load(gpt(), ckpt, data(), steps=STEPS)
    assert history == {**read_checkpoint(ckpt)["history"], "origin": "checkpoint"}
    assert "shipped" not in capsys.readouterr().out
    assert "when this checkpoint was trained" in training_line("g", history)


def damage_file(folder, how):
    file = folder / "00_gpt_cpu.pt"
    raw = bytearray(file.read_bytes())
    if how == "flipped":
        raw[len(raw) // 2] ^= 0xFF
    elif how == "truncated":
        raw = raw[: len(raw) // 2]
    file.write_bytes(bytes(raw))


def edit_manifest(folder, **changes):
    path = folder / weights.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["00_gpt_cpu"].update(changes)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda d: damage_file(d, "flipped"), "SHA-256 does not match"),
        (lambda d: damage_file(d, "truncated"), "SHA-256 does not match"),
        (lambda d: edit_manifest(d, sha256="0" * 64), "SHA-256 does not match"),
        (lambda d: (d / "00_gpt_cpu.pt").unlink(), "the file is missing"),
        (lambda d: edit_manifest(d, model="minigen.tokenizers.VQVAE"), "holds a 'minigen.tokenizers.VQVAE'"),
        (lambda d: edit_manifest(d, step=2), "fewer than the 8 asked for"),
    ],
    ids=["flipped-byte", "truncated", "manifest-checksum", "missing", "other-model", "too-few-steps"],
)
def test_a_bad_shipped_file_is_reported_in_one_line_and_trains(shipped_dir, tmp_path, capsys, damage, reason):
    damage(shipped_dir)
    history = train_or_load(gpt(), tmp_path / "00_gpt_cpu.pt", data(), steps=STEPS, progress=False)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and reason in lines[0] and str(shipped_dir / "00_gpt_cpu.pt") in lines[0]
    assert len(history["loss"]) == STEPS  # it trained


def test_a_config_mismatch_is_reported_and_trains(shipped_dir, tmp_path, capsys):
    history = train_or_load(gpt(n_embd=32), tmp_path / "00_gpt_cpu.pt", data(), steps=STEPS, progress=False)
    (line,) = capsys.readouterr().out.splitlines()
    assert "was trained with n_embd=16, not this model's n_embd=32" in line and len(history["loss"]) == STEPS


def test_a_corrupt_file_with_a_matching_checksum_never_raises(shipped_dir, tmp_path, capsys):
    file = shipped_dir / "00_gpt_cpu.pt"
    file.write_bytes(file.read_bytes()[:300])  # truncated, and the manifest updated to match: torch.load fails
    edit_manifest(shipped_dir, sha256=weights.sha256(file))
    model = gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert weights.load_shipped(model, "00_gpt_cpu") is None
    assert "it does not load" in capsys.readouterr().out
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    assert load_model_shipped("00_gpt_cpu") is None and load_model_shipped("nothing_here") is None


def test_the_package_manifest_is_consistent():
    """Whatever ships in minigen/pretrained/: every entry's file is there, matches its SHA-256 and loads."""
    manifest = json.loads((weights.PACKAGE_DIR / weights.MANIFEST).read_text())
    for stem, entry in manifest.items():
        file = weights.PACKAGE_DIR / entry["file"]
        assert weights.sha256(file) == entry["sha256"], stem
        assert isinstance(torch.load(file, weights_only=True), dict)
        assert len(entry["history"].get("loss", [])) <= weights.MAX_POINTS


def test_the_command_line_exports_and_lists(checkpoints, tmp_path, capsys):
    out = tmp_path / "weights"
    assert cli.main(["weights", "export", str(checkpoints / "02_vq_cpu.pt"), "--dir", str(out)]) == 0
    assert "cpu-preset weights 02_vq_cpu (trained 8 steps" in capsys.readouterr().out
    assert cli.main(["weights", "list", "--dir", str(out)]) == 0 and "02_vq_cpu" in capsys.readouterr().out
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert cli.main(["weights", "export", str(tmp_path / "junk.pt"), "--dir", str(out)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "junk.pt is corrupt or not a checkpoint" in line


def test_a_config_with_tuples_survives_the_json_manifest(tmp_path, monkeypatch):
    """MultiScaleVQ's scales are a tuple; JSON stores a list: the shipped entry still fits the model."""
    recipe = registry.recipe("msvq", "smoke")
    save_checkpoint(tmp_path / "04_msvq_smoke.pt", recipe["model"], step=3, history={"step": [1, 2, 3]})
    monkeypatch.setenv("MINIGEN_WEIGHTS_DIR", str(tmp_path / "weights"))
    weights.export([tmp_path / "04_msvq_smoke.pt"])
    model = load_model_shipped("04_msvq_smoke", "cpu")
    assert model is not None and model.config == recipe["model"].config
    assert isinstance(model.config.scales, tuple)


# --- a token model's tokenizer ships once ---


@pytest.fixture(scope="module")
def token_model_checkpoints(tmp_path_factory):
    """An autoencoder exported as notebook 06 ships it, and a FlowAR trained on top of the shipped copy, as
    notebook 11 trains it: the FlowAR checkpoint carries the autoencoder's tensors under "tokenizer."."""
    from minigen.flow_ar import FlowAR
    from minigen.tokenizers import AEConfig, ContinuousAE

    folder = tmp_path_factory.mktemp("token_models")
    torch.manual_seed(0)
    images = torch.utils.data.TensorDataset(torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,)))
    fit(ContinuousAE(AEConfig(channels=8, n_res=1, latent_dim=3)), make_loader(images, 16), steps=STEPS,
        ema_decay=0.9, progress=False, checkpoint=folder / "06_ae_cpu.pt")  # fmt: skip
    ae = ContinuousAE(AEConfig(channels=8, n_res=1, latent_dim=3))
    shipped_ae = folder / "shipped_ae"
    weights.export([folder / "06_ae_cpu.pt"], shipped_ae)
    ae.load_state_dict({k: v.float() for k, v in torch.load(shipped_ae / "06_ae_cpu.pt", weights_only=True).items()})
    flow = FlowAR.from_tokenizer(ae, n_layer=1, n_head=2, n_embd=16, head_width=16, head_depth=1)
    fit(flow, make_loader(images, 16), steps=STEPS, ema_decay=0.9, progress=False, checkpoint=folder / "11_flow_cpu.pt")
    return folder


def test_a_token_model_names_its_shipped_tokenizer_instead_of_copying_it(
    token_model_checkpoints, tmp_path, monkeypatch
):
    together, alone = tmp_path / "together", tmp_path / "alone"
    weights.export([token_model_checkpoints / "06_ae_cpu.pt", token_model_checkpoints / "11_flow_cpu.pt"], together)
    weights.export([token_model_checkpoints / "11_flow_cpu.pt"], alone)  # no tokenizer there: it keeps its copy
    entry = json.loads((together / weights.MANIFEST).read_text())["11_flow_cpu"]
    assert entry["tokenizer_weights"] == "06_ae_cpu"
    stored = torch.load(together / "11_flow_cpu.pt", weights_only=True)
    assert stored and not any(k.startswith("tokenizer.") for k in stored)
    assert "tokenizer_weights" not in json.loads((alone / weights.MANIFEST).read_text())["11_flow_cpu"]
    assert (together / "11_flow_cpu.pt").stat().st_size < (alone / "11_flow_cpu.pt").stat().st_size
    loaded = {}
    for folder in (together, alone):
        monkeypatch.setenv("MINIGEN_WEIGHTS_DIR", str(folder))
        loaded[folder] = load_model_shipped("11_flow_cpu").state_dict()
    assert loaded[together].keys() == loaded[alone].keys()
    assert all(torch.equal(v, loaded[alone][k]) for k, v in loaded[together].items())
    # exported later, into a folder that already ships the tokenizer: shared too
    weights.export([token_model_checkpoints / "11_flow_cpu.pt"], together)
    assert json.loads((together / weights.MANIFEST).read_text())["11_flow_cpu"]["tokenizer_weights"] == "06_ae_cpu"


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda d: (d / "06_ae_cpu.pt").unlink(), "its tokenizer's file 06_ae_cpu.pt is missing"),
        (lambda d: (d / "06_ae_cpu.pt").write_bytes(b"not a tensor file"), "SHA-256 of its tokenizer's file"),
    ],
)
def test_a_missing_or_damaged_shared_tokenizer_is_reported_in_one_line(
    token_model_checkpoints, tmp_path, monkeypatch, capsys, damage, reason
):
    folder = tmp_path / "pretrained"
    weights.export([token_model_checkpoints / "06_ae_cpu.pt", token_model_checkpoints / "11_flow_cpu.pt"], folder)
    damage(folder)
    monkeypatch.setenv("MINIGEN_WEIGHTS_DIR", str(folder))
    assert load_model_shipped("11_flow_cpu") is None
    assert reason in capsys.readouterr().out


def test_a_shared_tokenizer_exported_again_with_other_weights_is_reported(
    token_model_checkpoints, tmp_path, monkeypatch, capsys
):
    folder = tmp_path / "pretrained"
    weights.export([token_model_checkpoints / "06_ae_cpu.pt", token_model_checkpoints / "11_flow_cpu.pt"], folder)
    state = read_checkpoint(token_model_checkpoints / "06_ae_cpu.pt")
    key = next(k for k in state["ema"] if state["ema"][k].is_floating_point())
    state["ema"][key] = state["ema"][key] + 1.0  # the autoencoder retrained, and exported again alone
    torch.save(state, tmp_path / "06_ae_cpu.pt")
    weights.export([tmp_path / "06_ae_cpu.pt"], folder)
    monkeypatch.setenv("MINIGEN_WEIGHTS_DIR", str(folder))
    assert load_model_shipped("11_flow_cpu") is None  # not silently on a tokenizer it was not trained with
    assert "changed since it was exported" in capsys.readouterr().out


def test_a_tokenizer_that_changed_keeps_its_own_copy(token_model_checkpoints, tmp_path):
    state = read_checkpoint(token_model_checkpoints / "11_flow_cpu.pt")
    key = next(k for k in state["ema"] if k.startswith("tokenizer.") and state["ema"][k].is_floating_point())
    state["ema"][key] = state["ema"][key] + 1.0  # a fine-tuned tokenizer is not the shipped one
    torch.save(state, tmp_path / "11_tuned_cpu.pt")
    weights.export([token_model_checkpoints / "06_ae_cpu.pt", tmp_path / "11_tuned_cpu.pt"], tmp_path / "out")
    assert "tokenizer_weights" not in json.loads((tmp_path / "out" / weights.MANIFEST).read_text())["11_tuned_cpu"]
