"""Notebook 03's implement-it check: the worked solution passes, typical mistakes fail, the stub is reported."""

import pytest
import torch
from conftest import solution_function

from minigen.exercises.token_ar import check_sample_tokens
from minigen.sampling import sample_from_probs


def planted(
    use_cache=True,
    row=-1,
    use_temperature=True,
    prefix_with_cache=False,
    skip_prefill_logits=False,
    first_token_each_pass=False,
):
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
            if first_token_each_pass and t > 0:  # token 0 fed again and again instead of the newest
                x = model.token_emb(tokens[:, :1])
            elif skip_prefill_logits or (use_cache and t > 0 and not prefix_with_cache):
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


def cached_loop(*, labels_of=lambda labels: labels, first=None, cache_for=None, draw=None, returned=None):
    """A KV-cached loop with one step swapped for a slip (all None: a correct loop): what pass 0 feeds
    (first(model, labels)), the cache pass t gets (cache_for(model, cache, t)), how a token is drawn
    (draw(logits, temperature, generator)) and what is returned (returned(tokens))."""

    @torch.no_grad()
    def sample_tokens(model, labels, *, temperature=1.0, generator=None):
        n = len(labels)
        cache = model.transformer.new_cache(n)
        tokens = torch.zeros(n, 0, dtype=torch.long)
        for t in range(model.seq_len):
            if t > 0:
                x = model.token_emb(tokens[:, -1:])
            else:
                x = first(model, labels) if first else model.embed(tokens, labels_of(labels))
            given = cache_for(model, cache, t) if cache_for else cache
            logits = model.head(model.transformer(x, cache=given)[:, -1])
            if draw:
                token = draw(logits, temperature, generator)
            else:
                token = sample_from_probs((logits / temperature).softmax(-1), generator)
            tokens = torch.cat([tokens, token[:, None]], dim=1)
        return returned(tokens) if returned else tokens

    return sample_tokens


CAUSES = {  # slip: (the learner's function, what the check must say)
    "temperature not applied": (planted(use_temperature=False), "the temperature is not applied"),
    "temperature multiplied": (
        cached_loop(draw=lambda logits, T, g: sample_from_probs((logits * T).softmax(-1), g)),
        "the logits were multiplied by the temperature",
    ),
    "argmax": (cached_loop(draw=lambda logits, T, g: logits.argmax(-1)), "every token is the most likely one"),
    "labels ignored": (cached_loop(labels_of=lambda labels: None), "the labels were ignored"),
    "class token not fed": (
        cached_loop(first=lambda model, labels: model.token_emb(torch.zeros(len(labels), 1, dtype=torch.long))),
        "the class token was not fed",
    ),
    "first row's logits": (planted(use_cache=False, row=0), "drawn from the first position's logits"),
    "no cache after pass 0": (
        cached_loop(cache_for=lambda model, cache, t: cache if t == 0 else None),
        "pass 1 ran the transformer without the cache",
    ),
    "a new cache every pass": (
        cached_loop(
            cache_for=lambda model, cache, t: cache if t == 0 else model.transformer.new_cache(cache.k[0].shape[0])
        ),
        "pass 1 used another cache than pass 0",
    ),
    "a start placeholder returned": (
        cached_loop(returned=lambda tokens: torch.cat([torch.zeros_like(tokens[:, :1]), tokens[:, :-1]], 1)),
        "shifted one place right",
    ),
    "token 0 dropped": (
        cached_loop(returned=lambda tokens: torch.cat([tokens[:, 1:], tokens[:, -1:]], 1)),
        "shifted one place left",
    ),
    "torch.multinomial": (
        cached_loop(draw=lambda logits, T, g: torch.multinomial((logits / T).softmax(-1), 1, generator=g)[:, 0]),
        "your loop used the generator otherwise than the library",
    ),
    "a later pass fed the wrong token": (
        planted(first_token_each_pass=True),
        "pass 0 agrees, so what a later pass feeds the model is off",
    ),
}


@pytest.mark.parametrize("slip", list(CAUSES))
def test_each_cause_of_different_tokens_is_named(slip):
    fn, said = CAUSES[slip]
    with pytest.raises(AssertionError) as caught:
        check_sample_tokens(fn)
    message = str(caught.value)
    assert "tokens first differ at position" in message and said in message, message


def test_the_stub_is_reported_not_raised(capsys):
    def sample_tokens(model, labels, *, temperature=1.0, generator=None):
        raise NotImplementedError

    assert check_sample_tokens(sample_tokens) is False
    assert "not implemented yet" in capsys.readouterr().out
