"""Distilled decoding's flow (minigen/distilled.py): the closed-form velocity and its posterior, the noise -> token
flow drawing from the categorical it is given, and the teacher map: deterministic given the noise, and over noise
the teacher's own distribution (enumeration and chi-square on a tiny model)."""

import itertools

import pytest
import torch
from conftest import tiny_gpt
from test_speculative import chi_square_pvalue

from minigen.distilled import categorical_velocity, code_embeddings, flow_to_tokens, teacher_map
from minigen.sampling import warp_logits


def test_at_t_one_the_posterior_is_the_prior_and_the_velocity_points_from_the_mean():
    codes = code_embeddings(torch.randn(5, 3, generator=torch.Generator().manual_seed(0)))
    probs = torch.tensor([[0.5, 0.2, 0.1, 0.1, 0.1]]).expand(7, 5)
    x = torch.randn(7, 3)
    velocity, posterior = categorical_velocity(x, 1.0, probs, codes)
    torch.testing.assert_close(posterior, probs)
    torch.testing.assert_close(velocity, x - probs @ codes)
    assert float(codes.pow(2).mean()) == pytest.approx(1.0)


def test_the_flow_draws_tokens_from_the_categorical_and_zero_probability_never():
    codes = code_embeddings(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)))
    p = torch.tensor([0.4, 0.25, 0.15, 0.12, 0.08, 0.0])
    n = 60_000
    noise = torch.randn(n, 4, generator=torch.Generator().manual_seed(1))
    tokens = flow_to_tokens(noise, p.expand(n, 6), codes, steps=32)
    freq = torch.bincount(tokens, minlength=6).double() / n
    assert float((freq - p.double()).abs().sum() / 2) < 0.012  # total variation: discretisation plus sampling
    assert freq[5] == 0
    assert torch.equal(flow_to_tokens(noise[:100], p.expand(100, 6), codes, steps=32), tokens[:100])  # deterministic
    uniform = flow_to_tokens(noise, torch.full((n, 6), 1 / 6), codes, steps=32)  # a flow that ignores p: caught
    assert float((torch.bincount(uniform, minlength=6).double() / n - p.double()).abs().sum() / 2) > 0.1


def test_the_teacher_map_is_deterministic_and_samples_the_teachers_distribution():
    teacher = tiny_gpt(0, seq_len=3, vocab=4)
    codes = code_embeddings(torch.randn(4, 3, generator=torch.Generator().manual_seed(2)))
    n = 8000
    noise = torch.randn(n, 3, 3, generator=torch.Generator().manual_seed(3))
    tokens = teacher_map(teacher, noise, codes=codes, steps=32, temperature=0.9)
    assert torch.equal(teacher_map(teacher, noise[:50], codes=codes, steps=32, temperature=0.9), tokens[:50])
    seqs = torch.tensor(list(itertools.product(range(4), repeat=3)))
    with torch.no_grad():
        probs = warp_logits(teacher(seqs), temperature=0.9)  # (64, 3, 4)
    exact = probs.gather(-1, seqs[..., None])[..., 0].prod(-1).double()  # (64,)
    assert chi_square_pvalue(tokens, exact, 4) > 1e-3
    assert chi_square_pvalue(tokens, exact.roll(1), 4) < 1e-6  # the test can tell another distribution


def test_bad_shapes_are_refused():
    codes = torch.randn(4, 3)
    with pytest.raises(ValueError, match="noise"):
        flow_to_tokens(torch.randn(5, 2), torch.full((5, 4), 0.25), codes)
    with pytest.raises(ValueError, match="steps"):
        flow_to_tokens(torch.randn(5, 3), torch.full((5, 4), 0.25), codes, steps=0)
    with pytest.raises(ValueError, match="noise must be"):
        teacher_map(tiny_gpt(0, seq_len=3, vocab=4), torch.randn(2, 4, 3), codes=codes)
