"""Nothing lost, nothing silently wrong (issue: robustness): the weights export is all or nothing, a manifest it
cannot read is never written over, damaged manifest entries are left out with one line, a full disk or a bad
device is one line naming the cause, sampling refuses overflowing knobs, Ctrl-C in `python -m minigen train`
saves, says how to resume in one line, and the resumed run ends where an uninterrupted one does."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minigen import cli, files, weights
from minigen.data import BinaryPatterns, data_dir, make_loader
from minigen.pixel_ar import PixelGPT, PixelGPTConfig
from minigen.sampling import sample_from_probs
from minigen.train import fit, read_checkpoint, save_checkpoint, seed_everything, train_or_load


def gpt():
    return PixelGPT(PixelGPTConfig(image_size=4, n_classes=0, n_layer=1, n_head=2, n_embd=16))


def snapshot(folder: Path) -> dict:
    """Every file of a folder (hidden ones too) with its SHA-256: equal snapshots mean nothing changed."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def exported(tmp_path):
    """A weights folder with one model exported (a finished 8-step run), and a second finished checkpoint."""
    loader = make_loader(BinaryPatterns(size=4, n_patterns=4).dataset(64), 16)
    for stem in ("00_a_cpu", "00_b_cpu"):
        torch.manual_seed(0 if stem == "00_a_cpu" else 1)
        fit(gpt(), loader, steps=8, progress=False, checkpoint=tmp_path / f"{stem}.pt")
    out = tmp_path / "pretrained"
    weights.export([tmp_path / "00_a_cpu.pt"], out)
    return tmp_path, out


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "minigen", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "MINIGEN_SMOKE": "1", **(env or {})},
        timeout=300,
    )


# --- the weights export: all or nothing ------------------------------------------------------------------------


def test_an_export_that_fails_on_a_later_file_changes_nothing(exported):
    folder, out = exported
    (folder / "junk.pt").write_text("junk")
    before = snapshot(out)
    with pytest.raises(ValueError, match="junk.pt is corrupt or not a checkpoint"):
        weights.export([folder / "00_b_cpu.pt", folder / "junk.pt"], out)
    assert snapshot(out) == before
    result = run_cli("weights", "export", folder / "00_a_cpu.pt", folder / "junk.pt", "--dir", out)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and snapshot(out) == before


@pytest.mark.parametrize("when", ["writing", "renaming"])
def test_an_interrupted_or_failing_export_changes_nothing(exported, monkeypatch, when):
    folder, out = exported
    before = snapshot(out)
    if when == "writing":  # Ctrl-C while the second file is written aside
        save, calls = torch.save, []

        def interrupted_save(obj, path):
            calls.append(path)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return save(obj, path)

        monkeypatch.setattr(torch, "save", interrupted_save)
        error = KeyboardInterrupt
    else:  # the second rename onto the folder fails: the first is put back
        replace, renames = os.replace, []

        def failing_replace(src, dst):
            if not Path(dst).name.startswith("."):  # a rename onto a shipped file or the manifest
                renames.append(dst)
                if len(renames) == 2:
                    raise OSError("the file system went away")
            return replace(src, dst)

        monkeypatch.setattr(os, "replace", failing_replace)
        error = OSError
    with pytest.raises(error):
        weights.export([folder / "00_a_cpu.pt", folder / "00_b_cpu.pt"], out)
    monkeypatch.undo()
    assert snapshot(out) == before


def test_an_export_over_an_unreadable_manifest_is_refused(exported):
    folder, out = exported
    manifest = out / weights.MANIFEST
    manifest.write_text("<<<<<<< HEAD\n" + manifest.read_text())
    before = snapshot(out)
    result = run_cli("weights", "export", folder / "00_b_cpu.pt", "--dir", out)
    assert result.returncode == 2 and "cannot be read" in result.stderr and "mend or remove it" in result.stderr
    assert snapshot(out) == before


def test_an_unfinished_run_is_exported_only_when_asked(exported):
    folder, out = exported
    loader = make_loader(BinaryPatterns(size=4, n_patterns=4).dataset(64), 16)
    batch = next(iter(loader))

    def two_batches_then_a_crash():
        yield batch
        yield batch
        raise RuntimeError("the machine went away")

    with pytest.raises(RuntimeError, match="went away"):  # stops after two finished steps, each saved
        fit(
            gpt(),
            two_batches_then_a_crash(),
            steps=8,
            progress=False,
            checkpoint=folder / "00_c_cpu.pt",
            checkpoint_seconds=0.0,
        )
    assert read_checkpoint(folder / "00_c_cpu.pt")["step"] == 2
    with pytest.raises(ValueError, match=r"unfinished run \(step 2 of 8\).*--unfinished"):
        weights.export([folder / "00_c_cpu.pt"], out)
    assert "00_c_cpu" in weights.export([folder / "00_c_cpu.pt"], out, unfinished=True)


def test_export_and_list_name_a_bad_folder_in_one_line(exported, tmp_path):
    folder, _ = exported
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    result = run_cli("weights", "export", folder / "00_a_cpu.pt", "--dir", a_file)
    assert result.returncode == 2 and "it is a file, not a folder" in result.stderr
    result = run_cli("weights", "list", "--dir", tmp_path / "nowhere")
    assert result.returncode == 2 and "no folder" in result.stderr and result.stdout == ""


# --- damaged manifests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [("history", [1, 2]), ("step", "3000"), ("sha256", "abc"), ("file", "../../etc/passwd"), ("config", [1])],
)
def test_a_malformed_manifest_entry_is_left_out_with_one_line(exported, monkeypatch, capsys, field, value):
    folder, out = exported
    manifest = json.loads((out / weights.MANIFEST).read_text())
    manifest["00_a_cpu"][field] = value
    (out / weights.MANIFEST).write_text(json.dumps(manifest))
    monkeypatch.setenv("MINIGEN_WEIGHTS_DIR", str(out))
    assert weights.read_manifest() == {}
    assert f"ignoring the shipped weights 00_a_cpu: its manifest entry is malformed ({field}" in capsys.readouterr().out
    result = run_cli("weights", "list", "--dir", out)  # no traceback: a line, then the documented fallback
    assert result.returncode == 0 and "malformed" in result.stdout and "Traceback" not in result.stderr
    loader = make_loader(BinaryPatterns(size=4, n_patterns=4).dataset(64), 16)
    history = train_or_load(gpt(), folder / "fresh" / "00_a_cpu.pt", loader, steps=2, progress=False)
    assert len(history["loss"]) == 2  # trained, as when nothing is shipped


# --- the file system ------------------------------------------------------------------------------------------


def test_a_full_disk_is_one_line_naming_the_path_and_no_file_is_left(tmp_path, monkeypatch):
    def full_disk_save(obj, path):
        Path(path).write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 201472 vs 201364")

    monkeypatch.setattr(torch, "save", full_disk_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(OSError, match=r"could not write .*model.pt: the disk is full"):
        save_checkpoint(tmp_path / "model.pt", gpt(), step=1)
    assert list(tmp_path.iterdir()) == []


def test_a_data_folder_that_cannot_be_a_folder_is_one_line(tmp_path, monkeypatch):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    monkeypatch.setenv("MINIGEN_DATA", str(a_file))
    with pytest.raises(NotADirectoryError, match=r"a-file \(\$MINIGEN_DATA\) is a file, not a folder"):
        data_dir()
    monkeypatch.setenv("MINIGEN_DATA", str(a_file / "below"))
    with pytest.raises(OSError, match=r"cannot create the data folder .*below \(\$MINIGEN_DATA\)"):
        data_dir()


def test_a_file_that_is_not_a_checkpoint_says_so_without_torchs_advice(tmp_path):
    (tmp_path / "notes.pt").write_text("my notes")
    result = run_cli("sample", tmp_path / "notes.pt", "--out", tmp_path / "s.png")
    assert result.returncode == 2 and "is not a minigen checkpoint" in result.stderr
    assert "weights_only=False" not in result.stderr and result.stderr.count("\n") == 1


# --- arguments ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["garbage", "", "cuda:x", "meta", "xla"])
def test_a_bad_device_is_one_line_naming_the_accepted_ones(device, tmp_path):
    result = run_cli("train", "pixelgpt", "--device", device, "--out", tmp_path / "run")
    assert result.returncode == 2 and "device must be one of cpu, cuda, cuda:N or mps" in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "run" / "model.pt").exists()


def test_bad_training_arguments_are_refused_before_training(tmp_path):
    assert "--out must name a folder" in run_cli("train", "pixelgpt", "--out", "").stderr
    result = run_cli("train", "arnet", "--precision", "bf16", "--out", tmp_path / "a")
    assert result.returncode == 2 and "--resume and --precision do not apply" in result.stderr


@pytest.mark.parametrize("knobs", [dict(temperature=1e-320), dict(cfg_scale=1e39), dict(temperature=float("nan"))])
def test_sampling_refuses_knobs_that_overflow(knobs):
    model = PixelGPT(PixelGPTConfig(image_size=4, n_classes=2, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match=next(iter(knobs))):
        model.sample(2, torch.tensor([0, 1]), **knobs)
    with pytest.raises(ValueError, match="not finite"):  # the net under every sampler: never the last index
        sample_from_probs(torch.tensor([[float("nan"), 1.0, 0.0]]))


def test_the_cli_refuses_an_overflowing_temperature(tmp_path):
    save_checkpoint(tmp_path / "m.pt", gpt())
    result = run_cli("sample", tmp_path / "m.pt", "--temperature", "1e-320", "--out", tmp_path / "s.png")
    assert result.returncode == 2 and "temperature" in result.stderr and not (tmp_path / "s.png").exists()


# --- Ctrl-C in the command line -------------------------------------------------------------------------------


def test_ctrl_c_in_training_saves_says_how_to_resume_and_the_resumed_run_ends_where_it_would_have(
    tmp_path, monkeypatch, capsys
):
    whole, part = tmp_path / "whole", tmp_path / "part"
    args = ["train", "pixelgpt", "--preset", "smoke", "--n", "4"]
    assert cli.main([*args, "--out", str(whole)]) == 0
    loss, calls = PixelGPT.loss, []

    def interrupting_loss(self, batch):
        calls.append(1)
        if len(calls) == 7:
            os.kill(os.getpid(), signal.SIGINT)
        return loss(self, batch)

    monkeypatch.setattr(PixelGPT, "loss", interrupting_loss)
    capsys.readouterr()
    assert cli.main([*args, "--out", str(part)]) == 130
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "it/s" not in line]  # no progress bars
    assert len(err) == 1 and err[0].startswith("interrupted at step 7 of 30: saved")
    assert err[0].endswith(f"resume: python -m minigen {' '.join(args)} --out {part} --resume")
    monkeypatch.undo()
    assert cli.main([*args, "--out", str(part)]) == 2  # not started over by accident
    assert "is an interrupted run (step 7 of 30): add --resume" in capsys.readouterr().err
    seed_everything(5)  # whatever state the session is in
    assert cli.main([*args, "--out", str(part), "--resume"]) == 0
    a, b = read_checkpoint(whole / "model.pt"), read_checkpoint(part / "model.pt")
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())


def test_interrupts_are_held_back_while_files_are_committed():
    committed = []
    with pytest.raises(KeyboardInterrupt):
        with files.interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            committed.append(True)  # reached: the interrupt waits for the block to end, then takes effect
    assert committed == [True]


def test_read_only_destinations_fail_before_the_work(exported, unwritable, monkeypatch):
    folder, _ = exported
    result = run_cli("weights", "export", folder / "00_a_cpu.pt", "--dir", unwritable)
    assert result.returncode == 2 and f"cannot write into {unwritable}" in result.stderr
    monkeypatch.setenv("MINIGEN_TRAIN", "1")
    trained = []
    monkeypatch.setattr("minigen.train.fit", lambda *a, **k: trained.append(1))
    loader = make_loader(BinaryPatterns(size=4, n_patterns=4).dataset(64), 16)
    with pytest.raises(OSError, match=f"cannot write into {unwritable}"):
        train_or_load(gpt(), unwritable / "00_a_cpu.pt", loader, steps=2, progress=False)
    assert trained == []  # refused before training, not after
