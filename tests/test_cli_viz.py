import json
import os
import re
import subprocess
import sys

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from minigen import cli, registry, viz, weights  # noqa: E402
from minigen.cli import main, train  # noqa: E402


def test_cli_train_smoke_writes_checkpoint_samples_and_metrics(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, TQDM_DISABLE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "minigen", "train", "pixelgpt", "--preset", "smoke", "--out", str(out), "--n", "16"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} >= {"model.pt", "samples.png", "metrics.json"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["preset"] == "smoke" and metrics["steps"] == 30
    assert metrics["test_nll_nats"] > 0 and metrics["test_bits_per_dim"] < 1.0  # binary pixels: at most 1 bit
    assert main(["sample", str(out / "model.pt"), "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    assert main(["sample", str(bad), "--out", str(tmp_path / "x.png")]) == 2
    assert "corrupt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "no-such-model"])


def test_registry_recipes_exist_for_every_preset():
    for name in registry.names():
        for preset in ("smoke", "cpu", "gpu"):
            rec = registry.recipe(name, preset)
            model = rec["model"]
            assert rec["steps"] > 0 and hasattr(model, "loss")
            assert hasattr(model, "sample") or hasattr(model, "reconstruct"), name
            kind = registry.kind(name)
            assert registry.kind_of(model) == kind and hasattr(model, "sample") == (kind != "tokenizer"), name
            assert (registry.data_spec(name) is None) == (kind in ("series", "student")), name
            if rec["tokenizer"]:  # the preset's tokenizer fits the model: same vocabulary, or same token width
                tok_config = registry.recipe(rec["tokenizer"], preset)["model"].config
                if model.vocab_size is None:
                    assert tok_config.latent_dim == model.token_dim, name
                else:
                    assert tok_config.n_codes == model.vocab_size, name
    with pytest.raises(ValueError, match="unknown model"):
        registry.recipe("nope", "cpu")
    with pytest.raises(ValueError, match="not a registered"):
        registry.model_class("os.system")
    assert registry.kind("pixel") == "generator"  # by its alias
    with pytest.raises(ValueError, match="not a registered"):
        registry.kind_of(torch.nn.Linear(1, 1))
    # the draft GPT is a TokenGPT of token_ar on its data, with speculative decoding's presets
    from minigen import speculative, token_ar

    draft = registry.recipe("draft", "smoke")
    assert type(draft["model"]) is token_ar.TokenGPT and draft["data"] == token_ar.DATA and draft["tokenizer"] == "vq"
    assert draft["steps"] == speculative.DRAFT_PRESETS["smoke"]["steps"]


def test_make_grid_layout():
    grid = viz.make_grid(torch.ones(5, 1, 4, 4), nrow=3, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1)
    with pytest.raises(ValueError, match="images"):
        viz.make_grid(torch.ones(2, 2, 4, 4))


def test_figures_draw_without_a_kernel():
    frames = torch.rand(10, 3, 1, 4, 4)
    assert viz.show_frames(frames, interactive=False) is None
    with pytest.raises(ValueError, match="titles"):
        viz.show_frames(frames, titles=["a"])
    ax = viz.plot_history(
        {"step": [1, 2, 3], "loss": [3.0, 2.0, 1.0], "eval_step": [3], "eval_loss": [1.5]}, reference=0.5
    )
    assert len(ax.lines) == 4
    with pytest.raises(ValueError, match="no losses"):
        viz.plot_history({"step": [], "loss": []})
    viz.show_mask(torch.ones(4, 4, dtype=torch.bool).tril(), block_sizes=[1, 3])
    matplotlib.pyplot.close("all")


def test_cli_train_arnet_smoke_writes_its_three_files(tmp_path):
    out = tmp_path / "arnet"
    assert main(["train", "arnet", "--preset", "smoke", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["p"] == 20 and metrics["stpe_arnet"] < metrics["stpe_classic"]
    assert (out / "samples.png").stat().st_size > 0
    assert main(["sample", str(out / "model.pt"), "--n", "3", "--out", str(tmp_path / "sim.png")]) == 0
    assert (tmp_path / "sim.png").stat().st_size > 0


def test_cli_train_gated_pixelcnn_smoke(tmp_path):
    out = tmp_path / "pixel"
    assert main(["train", "pixel", "--preset", "smoke", "--out", str(out), "--n", "4"]) == 0  # the alias of pixelcnn
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "pixelcnn" and 0 < metrics["test_bits_per_dim"] < 1.0
    assert (out / "samples.png").stat().st_size > 0


def test_cli_trains_the_tokenizer_then_the_token_gpt(tmp_path):
    out = tmp_path / "token-smoke"
    assert main(["train", "token", "--preset", "smoke", "--out", str(out), "--n", "10"]) == 0
    vq_metrics = json.loads((tmp_path / "vq-smoke" / "metrics.json").read_text())
    assert 0 < vq_metrics["test_mse"] < 0.2 and 0 < vq_metrics["test_codes_used"] <= 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "token" and 0 < metrics["test_bits_per_token"] <= 8.5  # 256 codes: 8 bits max
    assert main(["sample", str(out / "model.pt"), "--n", "4", "--out", str(tmp_path / "t.png")]) == 0
    assert main(["sample", str(tmp_path / "vq-smoke" / "model.pt"), "--out", str(tmp_path / "v.png")]) == 2
    # a second token run reuses the tokenizer instead of training it again
    before = (tmp_path / "vq-smoke" / "model.pt").stat().st_mtime_ns
    assert main(["train", "token", "--preset", "smoke", "--out", str(out), "--steps", "2", "--n", "2"]) == 0
    assert (tmp_path / "vq-smoke" / "model.pt").stat().st_mtime_ns == before


def test_cli_trains_maskgit_on_a_given_tokenizer(tmp_path):
    assert main(["train", "vq", "--preset", "smoke", "--out", str(tmp_path / "myvq"), "--n", "4"]) == 0
    out = tmp_path / "maskgit"
    assert (
        main(
            [
                "train",
                "maskgit",
                "--preset",
                "smoke",
                "--out",
                str(out),
                "--n",
                "10",
                "--tokenizer",
                str(tmp_path / "myvq" / "model.pt"),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "maskgit" and metrics["samples_per_second"] > 0
    assert not (tmp_path / "vq-smoke").exists()  # the given tokenizer was used, none trained
    assert (
        main(["train", "maskgit", "--preset", "smoke", "--out", str(out), "--tokenizer", str(tmp_path / "nope.pt")])
        == 2
    )


def test_cli_trains_var_with_its_multiscale_tokenizer(tmp_path):
    out = tmp_path / "var-smoke"
    assert main(["train", "var", "--preset", "smoke", "--out", str(out), "--n", "10"]) == 0
    vq_metrics = json.loads((tmp_path / "msvq-smoke" / "metrics.json").read_text())
    assert 0 < vq_metrics["test_mse"] < 0.2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "var" and 0 < metrics["test_bits_per_token"] <= 8.5
    assert main(["sample", str(out / "model.pt"), "--n", "4", "--out", str(tmp_path / "v.png")]) == 0


def test_cli_trains_mar_with_its_continuous_tokenizer(tmp_path):
    out = tmp_path / "mar-smoke"
    assert main(["train", "mar", "--preset", "smoke", "--out", str(out), "--n", "10"]) == 0
    ae_metrics = json.loads((tmp_path / "ae-smoke" / "metrics.json").read_text())
    assert 0 < ae_metrics["test_mse"] < 0.2 and "token_std" in ae_metrics and "test_perplexity" not in ae_metrics
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "mar" and metrics["samples_per_second"] > 0 and "test_bits_per_token" not in metrics
    assert main(["sample", str(out / "model.pt"), "--n", "4", "--out", str(tmp_path / "m.png")]) == 0


def test_train_from_python_returns_the_metrics_it_writes(tmp_path):
    metrics = train("vq", "smoke", tmp_path / "vq", steps=2, device="cpu", n=4)
    assert metrics == json.loads((tmp_path / "vq" / "metrics.json").read_text())
    assert metrics["model"] == "vq" and metrics["steps"] == 2 and "test_mse" in metrics
    assert (tmp_path / "vq" / "model.pt").exists() and (tmp_path / "vq" / "samples.png").exists()
    for bad, message in ((dict(n=0), "n must be"), (dict(steps=-1), "steps must be"), (dict(preset="huge"), "preset")):
        with pytest.raises(ValueError, match=message):
            train("vq", **{"preset": "smoke", "out": tmp_path / "x", **bad})
    with pytest.raises(ValueError, match="unknown model"):
        train("nope", "smoke", tmp_path / "x")


def test_point_labels_do_not_overlap_each_other_even_for_crowded_points():
    fig, ax = plt.subplots(figsize=(4, 3))
    xs = [1.0, 1.05, 1.1, 1.0, 3.0, 3.02, 8.0, 8.0]
    ys = [10.0, 10.5, 10.2, 11.0, 20.0, 20.3, 5.0, 5.1]
    ax.scatter(xs, ys)
    ax.set_xscale("log")
    fig.canvas.draw()
    texts = viz.label_points(ax, xs, ys, [f"sampler {i}" for i in range(len(xs))])
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert len(texts) == len(xs) and len(ax.texts) == len(xs)  # one label each, the tried ones removed
    overlaps = [(i, j) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]
    assert overlaps == []
    with pytest.raises(ValueError, match="as many"):
        viz.label_points(ax, xs, ys[:2], ["a"])
    plt.close(fig)


def test_sample_draws_from_shipped_weights_by_name_or_by_their_file_in_sharp_large_pixels(tmp_path):
    by_name, by_file = tmp_path / "name.png", tmp_path / "file.png"
    assert main(["sample", "03_token_cpu", "--n", "12", "--out", str(by_name)]) == 0  # as `weights list` names it
    assert main(["sample", str(weights.weights_dir() / "03_token_cpu.pt"), "--n", "12", "--out", str(by_file)]) == 0
    picture = plt.imread(by_name)
    assert (picture == plt.imread(by_file)).all()  # the same weights, the same seed
    # 12 digits of 28x28 in 10 columns (one per class), 1-pixel gaps, every pixel a block of SCALE x SCALE
    s = cli.SCALE
    assert s >= 4 and picture.shape[:2] == (s * (2 * 29 + 1), s * (10 * 29 + 1))
    assert (picture == picture[::s, ::s].repeat(s, axis=0).repeat(s, axis=1)).all()  # nearest neighbour, not blurred
    assert len(set(picture[..., 0].ravel().tolist())) > 2  # grey levels: a sampled picture, not a blank one
    with pytest.raises(ValueError, match="scale must be a positive integer"):
        viz.save_images(torch.rand(2, 1, 4, 4), tmp_path / "x.png", scale=0)


def help_text(*command, capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def help_entries(text: str) -> list[tuple[str, str]]:
    """(invocation, help) of every argument listed in an argparse --help text, continuation lines joined."""
    entries, listing = [], False
    for line in text.splitlines():
        if line.endswith(":") and not line.startswith(" "):  # "options:", "positional arguments:"
            listing = True
        elif not line.strip():
            listing = False
        elif listing and re.match(r"^  \S", line):  # an argument: its invocation, then (2+ spaces) its help
            invocation, _, rest = line.strip().partition("  ")
            entries.append([invocation, rest.strip()])
        elif listing and entries:
            entries[-1][1] = f"{entries[-1][1]} {line.strip()}".strip()
    return [tuple(entry) for entry in entries]


def test_every_argument_of_every_command_has_help_and_shows_its_default(capsys):
    top = help_text(capsys=capsys)
    description = top.split("\n\n")[1]  # after the usage line
    assert description.rstrip().endswith(".") and "," not in description.rstrip()[-2:], description
    commands = [("train",), ("sample",), ("list",), ("weights",), ("weights", "export"), ("weights", "list")]
    for command in commands:
        entries = help_entries(help_text(*command, capsys=capsys))
        assert entries, command
        for invocation, text in entries:
            assert text, f"{' '.join(command)}: {invocation} has no help"
            takes_a_value = invocation.startswith("--") and " " in invocation  # "--n N", not a flag like "--debug"
            if takes_a_value:
                assert "default" in text, f"{' '.join(command)}: {invocation} does not say its default: {text}"
    sample = dict(help_entries(help_text("sample", capsys=capsys)))
    assert "03_token_cpu" in sample["CHECKPOINT"] and sample["--n N"].endswith("(default: 64)")
