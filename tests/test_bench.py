import json

import pytest
import torch

from minigen import bench
from minigen.train import save_checkpoint


def test_bench_smoke_reports_rows_ratios_and_device(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        bench.main(
            [
                "--preset",
                "smoke",
                "--paradigms",
                "token",
                "pixelgpt",
                "maskgit",
                "var",
                "--batches",
                "1",
                "2",
                "--repeats",
                "1",
                "--device",
                "cpu",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["device"].startswith("cpu") and report["torch"]
    assert {(r["paradigm"], r["variant"], r["batch"]) for r in report["rows"]} == {
        (p, v, b) for p in ("token", "pixelgpt") for v in ("KV cache", "recompute") for b in (1, 2)
    } | {("maskgit", v, b) for v in ("T=8", "T=49") for b in (1, 2)} | {
        ("var", v, b) for v in ("KV cache", "recompute") for b in (1, 2)
    }
    assert {r["passes"] for r in report["rows"] if r["paradigm"] == "maskgit"} == {8, 49}
    assert {r["passes"] for r in report["rows"] if r["paradigm"] == "var"} == {6}
    token_rows = [r for r in report["rows"] if r["paradigm"] == "token"]
    assert all(r["passes"] == 49 and r["seconds_per_batch"] > 0 and not r["trained"] for r in token_rows)
    ratios = {(r["ratio"], r["batch"]) for r in report["ratios"]}
    assert ("token: KV cache vs recompute", 2) in ratios and ("MaskGIT T=8 vs raster token GPT (KV cache)", 1) in ratios
    assert "token: KV cache vs recompute" in capsys.readouterr().out


def test_bench_uses_given_checkpoints_and_rejects_unknown_names(tmp_path, capsys):
    from minigen import registry

    model = registry.recipe("token", "smoke")["model"]
    save_checkpoint(tmp_path / "t.pt", model, step=1)
    report = bench.run(
        paradigms=["token"],
        preset="smoke",
        batches=[1],
        repeats=1,
        checkpoints={"token": str(tmp_path / "t.pt")},
        device="cpu",
    )
    assert all(r["trained"] for r in report["rows"])
    assert bench.main(["--paradigms", "nope", "--preset", "smoke"]) == 2
    assert bench.main(["--checkpoint", "token", "--preset", "smoke"]) == 2
    assert "NAME=PATH" in capsys.readouterr().err


def test_bench_times_every_speculative_variant_against_plain_sampling():
    report = bench.run(paradigms=["speculative"], preset="smoke", batches=[1, 64], repeats=1, device="cpu")
    rows = {r["variant"]: r for r in report["rows"]}
    assert list(rows) == [label for label, _ in bench.SPECULATIVE] and {r["batch"] for r in rows.values()} == {1}
    assert rows["plain"]["passes"] == 49
    assert all(0 < r["passes"] <= 49 and 0 <= r["acceptance"] <= 1 for name, r in rows.items() if name != "plain")
    assert {r["ratio"] for r in report["ratios"]} == {f"speculative {v} vs plain" for v in list(rows)[1:]}
    assert "untrained" in bench.format_report(report)
    assert report["yardstick"] is None  # untrained models: no classifier is trained, nothing is scored


def test_bench_times_continuous_speculative_decoding_against_plain_sampling():
    report = bench.run(paradigms=["cspd"], preset="smoke", batches=[1, 64], repeats=1, device="cpu")
    rows = {r["variant"]: r for r in report["rows"]}
    assert list(rows) == [label for label, _ in bench.CONTINUOUS] and {r["batch"] for r in rows.values()} == {1}
    assert rows["plain"]["passes"] == 49 and 0 < rows["path g=3"]["passes"] <= 49
    assert 0 <= rows["path g=3"]["acceptance"] <= 1
    assert [r["ratio"] for r in report["ratios"]] == ["cspd path g=3 vs plain"]


def test_bench_times_mar_with_its_transformer_and_head_passes():
    report = bench.run(paradigms=["token", "mar"], preset="smoke", batches=[2], repeats=1, device="cpu")
    rows = {r["variant"]: r for r in report["rows"] if r["paradigm"] == "mar"}
    assert set(rows) == {"K=16 S=50", "K=16 S=10", "K=8 S=50"}
    assert (rows["K=16 S=50"]["passes"], rows["K=16 S=50"]["head_passes"]) == (16, 800)
    assert (rows["K=8 S=50"]["passes"], rows["K=8 S=50"]["head_passes"]) == (8, 400)
    ratios = {r["ratio"] for r in report["ratios"]}
    assert {"MAR K=16 S=50 vs raster token GPT (KV cache)", "mar: S=10 vs S=50 denoising steps"} <= ratios
    assert "800 head calls" in bench.format_report(report)


def test_bench_times_flowar_and_xar_beside_mar():
    report = bench.run(paradigms=["mar", "flowar", "xar"], preset="smoke", batches=[2], repeats=1, device="cpu")
    rows = {(r["paradigm"], r["variant"]): r for r in report["rows"]}
    # FlowAR: one transformer pass per scale (1, 2, 4, 7), one head call per flow step and scale
    assert (rows["flowar", "25 steps"]["passes"], rows["flowar", "25 steps"]["head_passes"]) == (4, 100)
    assert (rows["flowar", "10 steps"]["passes"], rows["flowar", "10 steps"]["head_passes"]) == (4, 40)
    # xAR: no head; one pass for the class, one per flow step, one per finished entity written into the cache
    assert rows["xar", "25 steps"]["passes"] == 1 + 4 * 25 + 3
    ratios = {r["ratio"] for r in report["ratios"]}
    assert {"FlowAR 25 steps vs MAR K=16 S=50", "xAR 25 steps vs MAR K=16 S=50"} <= ratios


def test_bench_scores_trained_models_and_finds_notebook_checkpoints(tmp_path):
    from minigen import registry
    from minigen.data import data_dir

    recipe = registry.recipe("token", "smoke")
    save_checkpoint(data_dir() / "03_token_smoke.pt", recipe["model"], step=recipe["steps"])  # a finished run
    report = bench.run(
        paradigms=["token", "speculative"],
        preset="smoke",
        batches=[1],
        repeats=1,
        device="cpu",
        models="notebooks",
        samples=20,
    )
    rows = {(r["paradigm"], r["variant"]): r for r in report["rows"]}
    assert all(r["trained"] for r in rows.values())
    assert (data_dir() / "bench" / "draft-smoke" / "model.pt").exists()  # no notebook draft: trained now
    assert not (data_dir() / "bench" / "token-smoke").exists()  # the notebook's token GPT was used
    for key, row in rows.items():
        if key[1] == "recompute":  # same samples as the KV cache: not scored twice
            assert "fid" not in row
        else:
            assert row["fid"] > 0 and 0 <= row["class_accuracy"] <= 1
    assert rows[("token", "KV cache")]["nll_over"] == "49 tokens" and rows[("token", "KV cache")]["nll"] > 0
    assert "nll" not in rows[("speculative", "plain")]
    assert report["yardstick"]["noise_fid"] > 0 and "FID / acc" in bench.format_report(report)
    table = bench.markdown_table(report).splitlines()
    token_line = next(line for line in table if line.startswith("| raster token GPT | KV cache |"))
    cells = [c.strip() for c in token_line.strip("|").split("|")]
    assert cells[2] == "49" and cells[5] == f"{rows[('token', 'KV cache')]['fid']:.0f}"
    assert sum(line.startswith("| speculative") for line in table) == len(bench.SPECULATIVE)
    fresh = bench.run(paradigms=["token"], preset="smoke", batches=[1], repeats=1, device="cpu")
    assert fresh["yardstick"] is None and all("fid" not in r for r in fresh["rows"])
    with pytest.raises(ValueError, match="models"):
        bench.run(paradigms=["token"], preset="smoke", batches=[1], repeats=1, device="cpu", models="pretrained")


def test_a_stale_notebook_checkpoint_is_reported_and_replaced(capsys):
    from minigen.data import data_dir

    stale = data_dir() / "05_maskgit_smoke.pt"
    stale.write_bytes(b"not a checkpoint")
    model, path = bench.build("maskgit", "smoke", {}, "cpu", models="notebooks")
    assert path.endswith("bench/maskgit-smoke/model.pt") and model.mask_id > 0
    assert f"ignoring {stale}" in capsys.readouterr().out
    with pytest.raises(RuntimeError):  # a checkpoint the user names is never silently replaced
        bench.build("maskgit", "smoke", {"maskgit": str(stale)}, "cpu", models="notebooks")


def test_notebook_models_are_found_as_the_notebooks_found_them(tmp_path, monkeypatch, capsys):
    """--models notebooks uses what each notebook's train_or_load used: its finished checkpoint in data/, else the
    shipped weights for the same stem (a notebook that loaded them leaves no checkpoint). It retrains only when
    neither is there, and says so; it never takes an unfinished checkpoint for the notebook's model."""
    from minigen import registry, weights
    from minigen.data import data_dir

    def no_training(*args, **kwargs):
        raise AssertionError("retrained a model its notebook had weights for")

    monkeypatch.setattr(bench, "train", no_training)
    monkeypatch.setenv("MINIGEN_DATA", str(tmp_path / "data"))  # no data/bench/ copy left by another test
    monkeypatch.setenv("MINIGEN_WEIGHTS_DIR", str(tmp_path / "shipped"))
    monkeypatch.delenv("MINIGEN_TRAIN", raising=False)
    recipe = registry.recipe("draft", "smoke")
    torch.manual_seed(1)
    source = recipe["model"]
    save_checkpoint(tmp_path / "07_draft_smoke.pt", source, step=recipe["steps"])
    weights.export([tmp_path / "07_draft_smoke.pt"])  # shipped weights, and no data/07_draft_smoke.pt
    assert not (data_dir() / "07_draft_smoke.pt").exists()
    model, where = bench.build("draft", "smoke", {}, "cpu", models="notebooks")
    assert where == "shipped:07_draft_smoke"
    for a, b in zip(model.state_dict().values(), source.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-2)  # fp16 copies of the same weights
    assert registry.weights_record(where)["step"] == recipe["steps"]

    unfinished = data_dir() / "07_draft_smoke.pt"  # an interrupted notebook run: not the notebook's model
    save_checkpoint(unfinished, registry.recipe("draft", "smoke")["model"], step=recipe["steps"] - 1)
    assert bench.build("draft", "smoke", {}, "cpu", models="notebooks")[1] == "shipped:07_draft_smoke"
    assert f"ignoring {unfinished}: trained {recipe['steps'] - 1} steps" in capsys.readouterr().out

    save_checkpoint(unfinished, source, step=recipe["steps"])  # a finished checkpoint comes first
    model, where = bench.build("draft", "smoke", {}, "cpu", models="notebooks")
    assert where == str(unfinished) and registry.weights_record(where)["step"] == recipe["steps"]
    unfinished.unlink()

    monkeypatch.setenv("MINIGEN_WEIGHTS_DIR", str(tmp_path / "none"))  # neither: trained now, and it says so
    with pytest.raises(AssertionError, match="retrained"):
        bench.build("draft", "smoke", {}, "cpu", models="notebooks")
    assert "draft: no weights of its notebook (07_draft_smoke)" in capsys.readouterr().out


def test_every_paradigm_is_one_table_row_and_run_takes_keywords_only():
    from minigen import metrics, registry

    assert set(bench.PARADIGMS) <= set(registry.names()) and bench.Yardstick is metrics.Yardstick  # notebook 09
    family_models = {name for target, draft, _ in bench.FAMILIES.values() for name in (target, draft)}
    assert set(bench.NOTEBOOK_CHECKPOINTS) == set(bench.PARADIGMS) | family_models
    assert family_models <= set(registry.names())
    with pytest.raises(TypeError):
        bench.run(["pixelcnn"], "smoke", [1], 1)
    with pytest.raises(ValueError, match="preset"):
        bench.run(paradigms=["pixelcnn"], preset="huge", batches=[1], repeats=1)
    # passes come from the sampler's trace: 28 x 28 pixels, one network pass each
    report = bench.run(paradigms=["pixelcnn"], preset="smoke", batches=[1], repeats=1, device="cpu")
    assert [(r["variant"], r["passes"]) for r in report["rows"]] == [("windowed", 784)]
    assert "| Gated PixelCNN | windowed | 784 |" in bench.markdown_table(report)


def test_report_rows_keep_their_keys_and_ratios_divide_the_slow_row_by_the_fast_one():
    from minigen import report

    rows = [report.row("token", "recompute", 2, 49, 0.5, trained=False), report.row("token", "KV cache", 2, 49, 0.1)]
    assert list(rows[0]) == [
        "paradigm",
        "variant",
        "batch",
        "passes",
        "seconds_per_batch",
        "images_per_second",
        "trained",
    ]
    assert rows[0]["images_per_second"] == 4
    pairs = [("cache", "token", "recompute", "token", "KV cache"), ("missing", "var", "recompute", "var", "KV cache")]
    assert report.ratios(rows, pairs, [1, 2]) == [dict(ratio="cache", batch=2, speedup=pytest.approx(5))]
