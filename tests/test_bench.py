import json

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


def test_bench_times_mar_with_its_transformer_and_head_passes():
    report = bench.run(["token", "mar"], "smoke", [2], 1, {}, device="cpu")
    rows = {r["variant"]: r for r in report["rows"] if r["paradigm"] == "mar"}
    assert set(rows) == {"K=16 S=50", "K=16 S=10", "K=8 S=50"}
    assert (rows["K=16 S=50"]["passes"], rows["K=16 S=50"]["head_passes"]) == (16, 800)
    assert (rows["K=8 S=50"]["passes"], rows["K=8 S=50"]["head_passes"]) == (8, 400)
    ratios = {r["ratio"] for r in report["ratios"]}
    assert {"MAR K=16 S=50 vs raster token GPT (KV cache)", "mar: S=10 vs S=50 denoising steps"} <= ratios
    assert "800 head calls" in bench.format_report(report)
