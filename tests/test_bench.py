import json
import pytest
import torch

from minigen import bench
from minigen.train import save_checkpoint


def test_bench_smoke_reports_rows_ratios_and_device(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--preset", "smoke", "--paradigms", "token", "pixelgpt", "maskgit", "var", "--batches", "1", "2",
                       "--repeats", "1", "--device", "cpu", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["device"].startswith("cpu") and report["torch"]
    assert {(r["paradigm"], r["variant"], r["batch"]) for r in report["rows"]} == {
        (p, v, b) for p in ("token", "pixelgpt") for v in ("KV cache", "recompute") for b in (1, 2)} | {
        ("maskgit", v, b) for v in ("T=8", "T=49") for b in (1, 2)} | {
        ("var", v, b) for v in ("KV cache", "recompute") for b in (1, 2)}
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
    report = bench.run(["token"], "smoke", [1], 1, {"token": str(tmp_path / "t.pt")}, device="cpu")
    assert all(r["trained"] for r in report["rows"])
    assert bench.main(["--paradigms", "nope", "--preset", "smoke"]) == 2
    assert bench.main(["--checkpoint", "token", "--preset", "smoke"]) == 2
    assert "NAME=PATH" in capsys.readouterr().err


def test_bench_times_every_speculative_variant_against_plain_sampling():
    report = bench.run(["speculative"], "smoke", [1, 64], 1, {}, device="cpu")
    rows = {r["variant"]: r for r in report["rows"]}
    assert list(rows) == [label for label, _ in bench.SPECULATIVE] and {r["batch"] for r in rows.values()} == {1}
    assert rows["plain"]["passes"] == 49
    assert all(0 < r["passes"] <= 49 and 0 <= r["acceptance"] <= 1 for name, r in rows.items() if name != "plain")
    assert {r["ratio"] for r in report["ratios"]} == {f"speculative {v} vs plain" for v in list(rows)[1:]}
    assert "untrained" in bench.format_report(report)
    assert report["yardstick"] is None  # untrained models: no classifier is trained, nothing is scored


def test_bench_times_mar_with_its_transformer_and_head_passes():
    report = bench.run(["token", "mar"], "smoke", [2], 1, {}, device="cpu")
    rows = {r["variant"]: r for r in report["rows"] if r["paradigm"] == "mar"}
    assert set(rows) == {"K=16 S=50", "K=16 S=10", "K=8 S=50"}
    assert (rows["K=16 S=50"]["passes"], rows["K=16 S=50"]["head_passes"]) == (16, 800)
    assert (rows["K=8 S=50"]["passes"], rows["K=8 S=50"]["head_passes"]) == (8, 400)
    ratios = {r["ratio"] for r in report["ratios"]}
    assert {"MAR K=16 S=50 vs raster token GPT (KV cache)", "mar: S=10 vs S=50 denoising steps"} <= ratios
    assert "800 head calls" in bench.format_report(report)


def test_yardstick_scores_samples_by_their_requested_labels():
    from minigen.data import load_images
    ys = bench.Yardstick("smoke", torch.device("cpu"))
    test = load_images("mnist-subset", "test")
    by_class = [test.images[test.labels == k] for k in range(10)]

    def real_digits(count, labels, generator, shift=0):  # a perfect "model": unseen test digits of the asked class (+ shift)
        picks = []
        for k in labels.tolist():
            used[k] += 1
            picks.append(by_class[(k + shift) % 10][used[k] % 50])
        return torch.stack(picks)

    used = [0] * 10
    images, labels = bench.draw(real_digits, 200, 10, "cpu", batch=30)
    assert labels.tolist() == [i % 10 for i in range(200)]
    right = ys.score(images, labels, dict(name="mnist-subset"))
    used = [0] * 10
    wrong = ys.score(*bench.draw(lambda k, y, g: real_digits(k, y, g, shift=1), 200, 10, "cpu"), dict(name="mnist-subset"))
    noise = ys.score(torch.rand(200, 1, 28, 28), labels, dict(name="mnist-subset"))
    assert right["class_accuracy"] > 0.85 and wrong["class_accuracy"] < 0.15
    train = load_images("mnist-subset", "train")
    train_200 = torch.cat([train.images[train.labels == k][:20] for k in range(10)])  # 20 per class
    train_200 = ys.score(train_200, labels, dict(name="mnist-subset"))
    assert right["fid"] < 1.5 * train_200["fid"] < noise["fid"] / 10  # 200 digits: FID's small-sample bias
    assert abs(right["fid"] - wrong["fid"]) < 1e-6  # the same digits in another order: FID ignores labels
    # 14x14 binarised digits are scaled to 28x28 and judged against test digits of their own kind
    small = dict(name="mnist-subset", binarize=True, size=14)
    ys.score(load_images(split="test", **small).images[:100], test.labels[:100], small)
    assert set(ys.report["floor_fid"]) == {"grey 28px", "binarised 14px"}
    # an unconditional model is asked without labels and gets no class accuracy
    images, labels = bench.draw(lambda k, y, g: torch.rand(k, 1, 28, 28, generator=g), 130, 0, "cpu", batch=50)
    assert labels is None and images.shape == (130, 1, 28, 28)
    assert set(ys.score(images, labels, dict(name="mnist-subset"))) == {"fid"}


def test_bench_scores_trained_models_and_finds_notebook_checkpoints(tmp_path):
    from minigen import registry
    from minigen.data import data_dir
    save_checkpoint(data_dir() / "03_token_smoke.pt", registry.recipe("token", "smoke")["model"], step=1)
    report = bench.run(["token", "speculative"], "smoke", [1], 1, {}, device="cpu", models="notebooks", samples=20)
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
    fresh = bench.run(["token"], "smoke", [1], 1, {}, device="cpu")
    assert fresh["yardstick"] is None and all("fid" not in r for r in fresh["rows"])
    with pytest.raises(ValueError, match="models"):
        bench.run(["token"], "smoke", [1], 1, {}, device="cpu", models="pretrained")


def test_a_stale_notebook_checkpoint_is_reported_and_replaced(capsys):
    from minigen.data import data_dir
    stale = data_dir() / "05_maskgit_smoke.pt"
    stale.write_bytes(b"not a checkpoint")
    model, path = bench.build("maskgit", "smoke", {}, "cpu", models="notebooks")
    assert path.endswith("bench/maskgit-smoke/model.pt") and model.mask_id > 0
    assert f"ignoring {stale}" in capsys.readouterr().out
    with pytest.raises(RuntimeError):  # a checkpoint the user names is never silently replaced
        bench.build("maskgit", "smoke", {"maskgit": str(stale)}, "cpu", models="notebooks")
