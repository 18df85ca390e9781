"""Notebook 03's implement-it check: the worked solution passes, typical mistakes fail, the stub is reported."""

import pytest
import torch
from conftest import solution_function

from minigen.exercises.token_ar import check_sample_tokens
from minigen.sampling import sample_from_probs


def planted(use_cache=True, row=-1, use_temperature=True, prefix_with_cache=False, skip_prefill_logits=False):
    """A sampling loop with one mistake switched on (all off: a correct loop)."""

    @torch.no_grad()
    def sample_tokens(model, labels, *, temperature=1.0, generator=None):
        n = len(labels)
        cache = model.transformer.new_cache(n) if use_cache else None
        tokens = torch.zeros(n, 0, dtype=torch.long)
        if skip_prefill_logits:  # off by one: the class token's prediction is thrown away
            model.transformer(model.embed(tokens, labels), cache=cache)
            tokens = torch.zeros(n, 1, dtype=torch.long)
        for t in range(model.seq_len):
            if skip_prefill_logits or (use_cache and t > 0 and not prefix_with_cache):
                x = model.token_emb(tokens[:, -1:])
            elif use_cache and t > 0:
                x = model.token_emb(tokens)  # the whole prefix again, on top of the cache
            else:
                x = model.embed(tokens, labels)
            logits = model.head(model.transformer(x, cache=cache)[:, row])
            probs = (logits / (temperature if use_temperature else 1.0)).softmax(-1)
            tokens = torch.cat([tokens, sample_from_probs(probs, generator)[:, None]], dim=1)
        return tokens[:, 1:] if skip_prefill_logits else tokens

    return sample_tokens


def test_the_worked_solution_passes_and_planted_mistakes_fail():
    assert check_sample_tokens(solution_function("03_token_ar.ipynb", "sample_tokens")) is True
    assert check_sample_tokens(planted()) is True
    for mistake in (
        dict(use_cache=False),  # right tokens, but the whole prefix every pass
        dict(prefix_with_cache=True),  # the whole prefix fed on top of the cache: wrong positions, overflow
        dict(skip_prefill_logits=True),  # off by one in positions
        dict(use_cache=False, row=0),  # the logits of the first position instead of the last
        dict(use_temperature=False),  # temperature forgotten
    ):
        with pytest.raises(AssertionError):
            check_sample_tokens(planted(**mistake))


def test_multinomial_draws_are_not_the_library_s():
    def sample_tokens(model, labels, *, temperature=1.0, generator=None):
        n = len(labels)
        cache = model.transformer.new_cache(n)
        tokens = torch.zeros(n, 0, dtype=torch.long)
        x = model.embed(tokens, labels)
        for t in range(model.seq_len):
            if t > 0:
                x = model.token_emb(tokens[:, -1:])
            probs = (model.head(model.transformer(x, cache=cache)[:, -1]) / temperature).softmax(-1)
            tokens = torch.cat([tokens, torch.multinomial(probs, 1, generator=generator)], dim=1)
        return tokens

    with torch.no_grad(), pytest.raises(AssertionError, match="first differ"):
        check_sample_tokens(sample_tokens)


def test_the_stub_is_reported_not_raised(capsys):
    def sample_tokens(model, labels, *, temperature=1.0, generator=None):
        raise NotImplementedError

    assert check_sample_tokens(sample_tokens) is False
    assert "not implemented yet" in capsys.readouterr().out
