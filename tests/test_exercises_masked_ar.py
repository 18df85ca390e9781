import math

import pytest
import torch
from conftest import solution_function

from minigen.exercises.masked_ar import CASES, check_masked_counts
from minigen.masked_ar import MaskGIT, masked_schedule
from minigen.tokenizers import VQVAE, VQConfig


def counts_with(
    n_tokens,
    num_iter,
    *,
    rounding=math.floor,
    at=lambda t, T: (t + 1) / T,
    shape=None,
    at_least_one=True,
    zero_at_end=True,
):
    """The schedule with one rule changed: the planted mistakes of a learner."""
    shape = shape or (lambda r: math.cos(math.pi / 2 * r))
    counts, before = [], n_tokens
    for t in range(num_iter):
        after = rounding(n_tokens * shape(at(t, num_iter)) + 1e-9)
        if at_least_one:
            after = min(after, before - 1)
        after = max(after, 0)
        if zero_at_end and t == num_iter - 1:
            after = 0
        counts.append(after)
        before = after
    return counts


def test_the_reference_is_what_the_sampler_does():
    torch.manual_seed(0)
    vq = VQVAE(VQConfig(channels=8, n_res=1, latent_dim=4, n_codes=16))
    model = MaskGIT.from_tokenizer(vq, n_layer=1, n_head=2, n_embd=16, dropout=0.0).eval()
    for T in (3, 5, 16, 40):
        _, trace = model.sample(2, torch.tensor([0, 1]), num_iter=T, return_trace=True, generator=torch.Generator())
        assert trace["masked"] == masked_schedule(49, T)
    assert counts_with(49, 8) == masked_schedule(49, 8) == [48, 45, 40, 34, 27, 18, 9, 0]
    assert all(counts_with(n, T) == masked_schedule(n, T) for n, T in CASES)


def test_the_worked_solution_passes_and_planted_mistakes_fail():
    assert check_masked_counts(solution_function("05_masked_ar.ipynb", "masked_counts")) is True
    mistakes = {
        "ceil": lambda n, T: counts_with(n, T, rounding=math.ceil),
        "round": lambda n, T: counts_with(n, T, rounding=round),
        "a pass may reveal nothing": lambda n, T: counts_with(n, T, at_least_one=False),
        "tokens left at the end (ceil, no last-pass rule)": lambda n, T: counts_with(
            n, T, rounding=math.ceil, zero_at_end=False
        ),
        "t / T instead of (t + 1) / T": lambda n, T: counts_with(n, T, at=lambda t, T: t / T),
        "linear": lambda n, T: counts_with(n, T, shape=lambda r: 1 - r),
        "one count too few": lambda n, T: counts_with(n, T)[1:],
        "counts revealed, not masked": lambda n, T: [n - c for c in counts_with(n, T)],
    }
    for name, wrong in mistakes.items():
        with pytest.raises(AssertionError):
            check_masked_counts(wrong)
            pytest.fail(f"the check accepted the planted mistake: {name}")


def float32_counts(n_tokens, num_iter):
    """The schedule right in every rule, computed with float32 tensors: 16 cos(pi/3) = 7.9999995, floor 7."""
    counts, before = [], n_tokens
    for t in range(num_iter):
        r = torch.tensor((t + 1) / num_iter)  # float32
        after = int(torch.floor(n_tokens * torch.cos(torch.pi / 2 * r)))
        after = 0 if t == num_iter - 1 else max(min(after, before - 1), 0)
        counts.append(after)
        before = after
    return counts


def test_float_rounding_is_named_with_the_step_and_both_values():
    with pytest.raises(AssertionError) as caught:
        check_masked_counts(float32_counts)
    message = str(caught.value)
    assert "for N=16 tokens and T=3 steps you leave 7 masked after step 1 (0-based), the library leaves 8" in message
    assert "float rounding" in message and "16 cos(pi/2 * 2/3) is 8 exactly" in message, message
    assert "float64" in message and "round" in message
    # a schedule off by one where the exact value is far from an integer is not called rounding
    with pytest.raises(AssertionError) as caught:
        check_masked_counts(lambda n, T: counts_with(n, T, rounding=math.ceil))
    assert "float rounding" not in str(caught.value)


def test_the_stub_is_reported_not_raised(capsys):
    def masked_counts(n_tokens, num_iter):
        raise NotImplementedError

    assert check_masked_counts(masked_counts) is False
    assert "not implemented yet" in capsys.readouterr().out
