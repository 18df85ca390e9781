"""The command line refuses bad input before any expensive work, names the argument or path, exits non-zero and
leaves no partial file; programming errors keep their traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minigen import cli, weights
from minigen.arnet import ARNet, ARNetConfig
from minigen.pixel_ar import PixelGPT, PixelGPTConfig
from minigen.train import save_checkpoint


@pytest.fixture
def pixel_checkpoint(tmp_path):
    path = tmp_path / "px.pt"
    save_checkpoint(path, PixelGPT(PixelGPTConfig(image_size=4, n_layer=1, n_head=2, n_embd=16)))
    return path


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "minigen", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "MINIGEN_SMOKE": "1"},
        timeout=300,
    )


def test_an_unwritable_output_fails_before_training_naming_the_path(unwritable):
    result = run_cli("train", "pixelgpt", "--preset", "smoke", "--out", unwritable / "run")
    assert result.returncode == 2 and result.stdout == ""  # nothing trained, nothing printed
    assert f"cannot write into {unwritable / 'run'}" in result.stderr and "Traceback" not in result.stderr


def test_sample_checks_its_output_before_sampling(pixel_checkpoint, unwritable, tmp_path, capsys):
    a_file = tmp_path / "afile"
    a_file.write_text("not a folder")
    cases = {
        str(unwritable / "s.png"): f"cannot write into {unwritable}",
        str(a_file / "s.png"): f"cannot write into {a_file}: it is a file",
        str(tmp_path / "s.xyz"): r"s.xyz: the file name must end in one of",
    }
    for out, message in cases.items():
        assert cli.main(["sample", str(pixel_checkpoint), "--n", "2", "--out", out]) == 2
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "px.pt"]


def test_bad_counts_and_labels_are_refused_naming_the_argument(pixel_checkpoint, tmp_path, capsys):
    for args, message in [
        (["--n", "-3"], "--n must be a positive integer, got -3"),
        (["--n", "2", "--labels", "1", "2", "3"], "--labels gives 3 labels for --n 2"),
    ]:
        assert cli.main(["sample", str(pixel_checkpoint), "--out", str(tmp_path / "s.png"), *args]) == 2
        assert message in capsys.readouterr().err
    for args, message in [(["--n", "0"], "--n must be a positive integer"), (["--steps", "-1"], "--steps")]:
        out = tmp_path / "run"
        assert cli.main(["train", "pixelgpt", "--preset", "smoke", "--out", str(out), *args]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists(), "a refused run must not leave its folder behind"


def test_the_wrong_tokenizer_checkpoint_is_refused_before_training(pixel_checkpoint, tmp_path, capsys):
    out = tmp_path / "token-run"
    assert (
        cli.main(["train", "token", "--preset", "smoke", "--out", str(out), "--tokenizer", str(pixel_checkpoint)]) == 2
    )
    assert "holds a PixelGPT, but this model needs a VQVAE ('vq')" in capsys.readouterr().err
    assert not out.exists()
    assert (
        cli.main(
            ["train", "token", "--preset", "smoke", "--out", str(out), "--tokenizer", str(tmp_path / "missing.pt")]
        )
        == 2
    )
    assert "missing.pt does not exist" in capsys.readouterr().err


def test_sampling_options_that_do_not_apply_to_a_time_series_are_refused(tmp_path, capsys):
    path = tmp_path / "arnet.pt"
    save_checkpoint(path, ARNet(ARNetConfig(p=3)))
    for extra in (["--labels", "1"], ["--temperature", "0.5"]):
        assert cli.main(["sample", str(path), "--n", "2", "--out", str(tmp_path / "s.png"), *extra]) == 2
        assert "--labels and --temperature do not apply" in capsys.readouterr().err
    assert cli.main(["sample", str(path), "--n", "2", "--out", str(tmp_path / "s.png")]) == 0


def test_a_programming_error_keeps_its_traceback(pixel_checkpoint, tmp_path, monkeypatch):
    """A shape bug in a model a learner edited, or CUDA out of memory, is not an input error: no one-liner."""

    def broken(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")

    monkeypatch.setattr(PixelGPT, "sample", broken)
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        cli.main(["sample", str(pixel_checkpoint), "--n", "2", "--out", str(tmp_path / "s.png")])
    with pytest.raises(ValueError, match="--n"):  # --debug shows the traceback of input errors too
        cli.main(["sample", str(pixel_checkpoint), "--n", "0", "--debug"])


def test_a_failed_picture_write_leaves_no_partial_file(tmp_path, monkeypatch):
    from minigen import viz

    def failing_imsave(path, *args, **kwargs):
        Path(path).write_bytes(b"half a png")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(viz.plt, "imsave", failing_imsave)
    with pytest.raises(OSError, match="could not write .*s.png: the disk is full"):
        viz.save_images(torch.rand(4, 1, 4, 4), tmp_path / "s.png")
    assert list(tmp_path.iterdir()) == []


def test_sample_names_what_ships_when_a_checkpoint_is_neither_a_file_nor_shipped(tmp_path, capsys):
    out = str(tmp_path / "s.png")
    assert cli.main(["sample", "03_token", "--out", out]) == 2  # a typo of 03_token_cpu
    err = capsys.readouterr().err
    assert "no checkpoint file 03_token and no shipped weights of that name" in err
    assert "03_token_cpu" in err and "06_mar_cpu" in err and "02_vq_cpu" not in err  # a tokenizer does not sample
    for name, message in [
        ("02_vq_cpu", "the shipped weights 02_vq_cpu hold a tokenizer"),
        ("classifier_mnist-subset", "DigitClassifier, which does not sample"),
    ]:
        assert cli.main(["sample", name, "--out", out]) == 2
        assert message in capsys.readouterr().err
    copy = tmp_path / "03_token_cpu.pt"  # a shipped file away from its manifest holds only tensors
    copy.write_bytes((weights.weights_dir() / "03_token_cpu.pt").read_bytes())
    assert cli.main(["sample", str(copy), "--out", out]) == 2
    assert "name them: sample 03_token_cpu" in capsys.readouterr().err
    assert cli.main(["sample", "12_dd_cpu", "--temperature", "0.5", "--out", out]) == 2  # its sample() has none
    assert "DDStudent, whose sampling has no --temperature" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [copy]
