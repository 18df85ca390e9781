"""The compiled decoding pass and the decoding-roofline tools of notebook 10 (the static KV cache: test_nn.py).

Compiling takes seconds per pass length here, so the compiled tests use the smallest models and few shapes."""

import pytest
import torch
from conftest import tiny_gpt

import minigen.speculative as S
from minigen import bench, roofline

SMALL = dict(seq_len=6, vocab=8, n_classes=3)


def test_compile_needs_the_cache():
    with pytest.raises(ValueError, match="use_cache"):
        tiny_gpt(0, **SMALL).sample_tokens(1, compile=True, use_cache=False)


def test_compiled_sampling_draws_the_eager_tokens():
    """The compiled pass computes the same logits up to float rounding, so the same generator draws the same
    tokens: plain sampling (batch 2, guidance on: 4 rows) and exact speculative sampling (several pass lengths)."""
    target, draft = tiny_gpt(0, n_layer=2, **SMALL), tiny_gpt(1, **SMALL)
    labels = torch.tensor([0, 2])

    def plain(compile):
        g = torch.Generator().manual_seed(3)
        return target.sample_tokens(2, labels, cfg_scale=2.0, generator=g, compile=compile)[0]

    def speculative(compile):
        g = torch.Generator().manual_seed(4)
        return S.speculative_sample(target, draft, 1, [1], gamma=2, generator=g, compile=compile)

    assert torch.equal(plain(True), plain(False))
    (eager, eager_trace), (compiled, compiled_trace) = speculative(False), speculative(True)
    assert torch.equal(compiled, eager)
    assert compiled_trace["kept"] == eager_trace["kept"]


def test_deepened_model_keeps_the_distribution_and_costs_more():
    model = tiny_gpt(0, **SMALL)
    deep = roofline.deepened(model, 3)
    tokens, labels = torch.randint(0, 8, (4, 6)), torch.tensor([0, 1, 2, 0])
    assert deep.transformer.cfg.n_layer == 4 and len(deep.transformer.blocks) == 4
    torch.testing.assert_close(deep(tokens, labels), model(tokens, labels), atol=1e-6, rtol=1e-6)
    assert len(model.transformer.blocks) == 1  # the original is untouched
    cache = deep.transformer.new_cache(1)
    assert len(cache.k) == 4


def test_pass_seconds_and_roofline():
    model = roofline.timing_model(1, 2, 16, seq_len=24, vocab_size=16)
    assert model.seq_len == 24 and not model.training
    seconds = roofline.pass_seconds(model, 2, 4, prefix=4, repeats=3)
    assert 0 < seconds < 1
    curve = roofline.roofline(model, news=(1, 4, 32), batches=(1, 8), prefix=4, repeats=2)
    assert list(curve["new"]) == [1, 4]  # 32 positions do not fit after the prefix: left out
    assert list(curve["batch"]) == [1, 8] and all(s > 0 for s in curve["batch"].values())
    with pytest.raises(ValueError, match="prefix"):
        roofline.pass_seconds(model, 1, 30, prefix=4)
    bigger = roofline.timing_model(4, 2, 64, seq_len=24, vocab_size=16)
    # c of a 1-block draft against a 4-block, 4x wider target is well below 1; the ratio of a pass to itself is ~1
    assert roofline.pass_ratio(model, 1, bigger, prefix=4, rounds=3, repeats=5) < 1
    assert 0.3 < roofline.pass_ratio(model, 1, prefix=4, rounds=3, repeats=5) < 3


def test_expected_rounds_count_the_cut_short_last_rounds():
    assert S.expected_rounds(1.0, 3, 8) == 2  # every guess kept: 4 tokens a round
    assert S.expected_rounds(1.0, 3, 49) == 13  # twelve rounds of 4, then one for the last token
    assert S.expected_rounds(0.0, 3, 49) == 49  # nothing kept: one correction a round
    long = 4000 / S.expected_rounds(0.69, 4, 4000)  # a long sequence: the textbook tokens per round
    assert long == pytest.approx(S.expected_tokens_per_pass(0.69, 4), rel=1e-3)
    assert 49 / S.expected_rounds(0.69, 6, 49) < S.expected_tokens_per_pass(0.69, 6)


def test_predicted_speedup():
    # on a flat roofline with a free draft it is the tokens per round; a draft as dear as the target never pays
    assert S.predicted_speedup(0.5, 3, 0.0) == pytest.approx(S.expected_tokens_per_pass(0.5, 3)) == 1.875
    assert S.predicted_speedup(0.9, 4, 1.0) < 1
    assert S.predicted_speedup(0.69, 4, 0.025, verify=1.42) == pytest.approx(2.72 / 1.52, rel=0.01)
    short = S.predicted_speedup(0.69, 4, 0.025, verify=1.42, length=49)
    assert short == pytest.approx(49 / S.expected_rounds(0.69, 4, 49) / 1.52)


def test_bench_compiled_rows():
    report = bench.run(paradigms=["token"], preset="smoke", batches=[1], repeats=1, device="cpu", compile=True)
    variants = {r["variant"] for r in report["rows"]}
    assert {"KV cache", "compiled"} <= variants and report["compile"] is True
    assert any(r["ratio"] == "token: compiled vs eager (KV cache)" for r in report["ratios"])
    plain = bench.run(paradigms=["token"], preset="smoke", batches=[1], repeats=1, device="cpu")
    assert "compiled" not in {r["variant"] for r in plain["rows"]}


def test_report_columns_fit_the_compiled_labels():
    row = dict(batch=1, passes=13, seconds_per_batch=0.01, images_per_second=100.0, trained=True)
    rows = [dict(row, paradigm="speculative", variant="exact g=3 compiled"), dict(row, paradigm="token", variant="x")]
    ratio = dict(ratio="speculative jacobi w=8 compiled vs plain compiled", batch=1, speedup=2.0)
    report = dict(device="cpu", torch="2", preset="smoke", repeats=1, rows=rows, ratios=[ratio])
    rows_block, ratios_block = bench.format_report(report).split("\n\n")[1:3]
    for block in (rows_block, ratios_block):  # header and lines: every column starts at the same place
        assert len({len(line) for line in block.splitlines()}) == 1, block


def test_interleaved_takes_turns_and_can_draw_new_seeds():
    calls = []
    fns = {name: (lambda seed, name=name: calls.append((name, seed)) or seed) for name in ("a", "b")}
    runs = roofline.interleaved(fns, range(2), blocks=2)
    assert calls == [("a", 0), ("a", 1), ("b", 0), ("b", 1)] * 2 and all(len(v) == 2 for v in runs.values())
    calls.clear()
    results = {}
    roofline.interleaved(fns, range(2), blocks=3, new_seeds=True, results=results)
    assert results == {"a": [0, 1, 2, 3, 4, 5], "b": [0, 1, 2, 3, 4, 5]}  # every call a new sample
    assert [name for name, _ in calls[:4]] == ["a", "a", "b", "b"]  # turns within each block
    with pytest.raises(ValueError, match="block"):
        roofline.interleaved(fns, [], blocks=2)
