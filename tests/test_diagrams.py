"""The architecture sketches (VAR, MAR) and the drawn round of speculative decoding."""

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from conftest import tiny_gpt  # noqa: E402

from minigen import diagrams  # noqa: E402
from minigen import speculative as S  # noqa: E402
from minigen.diffusion_ar import MAR, MARConfig  # noqa: E402


def texts(fig) -> str:
    return "\n".join(t.get_text() for ax in fig.axes for t in ax.texts)


def patches(fig, gid) -> list:
    return [p for p in fig.axes[0].patches if p.get_gid() == gid]


def test_var_sketch_names_its_parts_and_draws_every_scale():
    fig = diagrams.sketch_var()
    words = texts(fig)
    for part in ("7x7", "1x1", "block-causal", "residual", "KV cache", "decoder", "6 passes for 104 tokens"):
        assert part in words
    assert len(patches(fig, "pass")) == 6
    assert len(patches(fig, "output map")) == 104  # 1 + 4 + 9 + 16 + 25 + 49 tokens predicted
    assert len(patches(fig, "tokenizer map")) == 104
    assert len(patches(fig, "input map")) == 4 + 9 + 16 + 25 + 49  # the class token is the first input
    assert len(fig.axes[0].child_axes) == 1  # the mask, inset in the canvas
    plt.close(fig)


def test_mar_sketch_names_its_parts_and_follows_the_samplers_schedule():
    fig = diagrams.sketch_mar(num_iter=8, diffusion_steps=50)
    words = texts(fig)
    for part in ("diffusion head", "bidirectional transformer", "[MASK]", "KL encoder", "S = 50", "cosine"):
        assert part in words
    assert len(patches(fig, "generation step")) == 8 * 49 and len(patches(fig, "denoising step")) == 5
    plt.close(fig)
    # the pictured passes fill as many tokens as MAR.sample does
    torch.manual_seed(0)
    mar = MAR(MARConfig(n_layer=1, n_head=2, n_embd=16, head_width=16, head_depth=1))
    _, trace = mar.sample(1, [3], num_iter=8, diffusion_steps=2, return_trace=True)
    assert diagrams._mar_counts(49, 8) == trace["counts"]


FAKE = dict(drafted=[17, 3, 250, 9], p_probs=[0.6, 0.3, 0.05, 0.4], q_probs=[0.5, 0.45, 0.3, 0.2], start=20)


@pytest.mark.parametrize("n_kept", [0, 1, 2, 3, 4])
def test_a_drawn_round_keeps_n_kept_guesses_and_rolls_back_the_rest(n_kept):
    fig = diagrams.draw_speculative_round(**FAKE, n_kept=n_kept, replacement=42)
    assert len(patches(fig, "kept")) == n_kept
    assert len(patches(fig, "rolled back")) == 4 - n_kept  # hatched draft guesses, the rejected one included
    assert len(patches(fig, "discarded")) == max(0, 4 - n_kept - 1)  # after the correction
    assert len(patches(fig, "correction")) == (n_kept < 4) and len(patches(fig, "bonus")) == (n_kept == 4)
    words = texts(fig)
    assert words.count("✓") == n_kept and words.count("✗") == (n_kept < 4)
    assert ("norm(max(0, p − q))" in words) == (n_kept < 4) and ("bonus b ~ p" in words) == (n_kept == 4)
    plt.close(fig)


def test_a_drawn_round_takes_whole_distributions_and_checks_its_input():
    p, q = torch.rand(5, 8).softmax(-1), torch.rand(4, 8).softmax(-1)  # (g + 1, V), (g, V)
    drafted = [1, 5, 2, 7]
    fig = diagrams.draw_speculative_round(drafted, p, q, 1, 3)
    heights = [r.get_height() for r in patches(fig, "p bar")]
    expected = p[torch.arange(4), drafted]
    assert torch.tensor(heights) / heights[0] == pytest.approx(expected / expected[0], rel=1e-6)
    plt.close(fig)
    with pytest.raises(ValueError, match="n_kept"):
        diagrams.draw_speculative_round(drafted, p, q, 5, 3)
    at_the_end = diagrams.draw_speculative_round(drafted, p[:4], q, 4, -1)  # nothing after the last position
    assert patches(at_the_end, "bonus") == [] and len(patches(at_the_end, "kept")) == 4
    plt.close("all")


def test_speculative_round_is_the_first_round_of_speculative_sample():
    target, draft = tiny_gpt(0, seq_len=12, vocab=6, n_classes=3), tiny_gpt(1, seq_len=12, vocab=6, n_classes=3)
    kept = []
    for guesser, seed in ((draft, 0), (draft, 1), (draft, 4), (target, 0)):  # the target as its own draft keeps all
        gen = lambda: torch.Generator().manual_seed(seed)
        r = diagrams.speculative_round(target, guesser, [2], prefix=torch.zeros(0), gamma=4, generator=gen())
        tokens, trace = S.speculative_sample(target, guesser, 1, [2], gamma=4, generator=gen())
        assert r["n_kept"] == trace["kept"][0] and r["start"] == 0
        assert r["drafted"][: r["n_kept"]] + [r["replacement"]] == tokens[0, : r["n_kept"] + 1].tolist()
        # p and q at the guesses: the target's and the guesser's next-token probabilities after each prefix
        seq = torch.tensor([r["drafted"]])
        for model, probs in ((target, r["p_probs"]), (guesser, r["q_probs"])):
            dist = S.Decoder(model, 1, [2]).feed(seq[:, :3])[0]  # (4, V): after the class token and each guess
            assert probs == pytest.approx(dist[torch.arange(4), seq[0]].tolist(), rel=1e-5)
        kept.append(r["n_kept"])
    assert kept[-1] == 4 and min(kept) < 4  # a round with a correction, and one with a bonus token
    fig = diagrams.draw_speculative_round(**r)
    assert len(patches(fig, "kept")) == 4 and len(patches(fig, "bonus")) == 1
    plt.close(fig)
    late = diagrams.speculative_round(
        target, draft, [2], prefix=10, gamma=4, generator=torch.Generator().manual_seed(0)
    )
    assert late["start"] == 10 and len(late["drafted"]) == 2  # only two positions were left to guess
    with pytest.raises(ValueError, match="nothing to guess"):
        diagrams.speculative_round(target, draft, [2], prefix=12)
