"""Checks for notebook 03's implement-it exercise: the KV-cached sampling loop of a raster-order GPT.

The learner writes `sample_tokens(model, labels, *, temperature=1.0, generator=None)`: prefill the class
token into the cache, then one new token per pass, each drawn from the last position's logits at the given
temperature; what `RasterGPT.sample_tokens` does without guidance, top-k and top-p. The check runs both on
small untrained models built on the CPU (random head, so every position has its own peaked distribution)
and compares the tokens drawn with the same generator, and the number of positions fed to the transformer.
Where the tokens differ, it names the cause: it replays the learner's tokens through the library's model (all
at once, teacher-forced) and tries each typical slip (temperature, labels, class token, logits row, argmax) on
the same random numbers, then looks at what each pass was fed (the cache) and how the generator was used.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from minigen.exercises import checked
from minigen.raster import RasterGPT
from minigen.sampling import sample_from_probs, warp_logits

CASES = [  # (seq_len, vocab, labels, temperature, model seed, sampling seed)
    (12, 16, [0, 1, 2, 0], 1.0, 0, 0),
    (12, 16, [2, 2, 1], 0.5, 0, 1),
    (20, 32, [1, 0], 1.7, 1, 2),
]


def tiny_gpt(seq_len: int, vocab: int, seed: int) -> RasterGPT:
    """An untrained 2-layer RasterGPT over 3 classes with a random (not zero) head: position-dependent,
    peaked next-token distributions, so a token drawn from the wrong row or temperature shows."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = RasterGPT(seq_len, vocab, n_classes=3, class_drop=0.1, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
        nn.init.normal_(model.head.weight, std=0.7)
        nn.init.normal_(model.class_emb.embed.weight, std=1.0)
    return model.eval()


def _count_fed_positions(model):
    """Record, for every call of model.transformer, how many positions it was fed, the cache it was given (None
    without one) and how many positions that cache held before the call."""
    calls = []

    def hook(module, args, kwargs):
        x = args[0] if args else kwargs.get("x")
        cache = args[2] if len(args) > 2 else kwargs.get("cache")
        calls.append((int(x.shape[1]), cache, None if cache is None else int(cache.length)))

    return calls, model.transformer.register_forward_pre_hook(hook, with_kwargs=True)


def _replays(tokens, policy, seed: int) -> bool:
    """Whether `tokens` (n, L) are what one draw per pass with sample_from_probs and a generator seeded `seed`
    gives when pass t draws from policy(t), the probabilities (n, V) a hypothesis says the loop used."""
    generator = torch.Generator().manual_seed(seed)
    return all(torch.equal(sample_from_probs(policy(t), generator), tokens[:, t]) for t in range(tokens.shape[1]))


def _cause(model, labels, temperature: float, seed: int, tokens, expected, calls) -> str:
    """Why the learner's tokens differ from the library's: the first typical cause that explains all of them.

    Most hypotheses are replays: the library's model, fed the learner's own tokens at once (teacher forcing,
    a full recompute), gives the logits every pass should have seen; a slip (temperature, labels, logits row,
    argmax) is named when drawing with it and the same random numbers reproduces every token the learner drew."""
    n, L = tokens.shape
    if L > 1 and torch.equal(tokens[:, 1:], expected[:, :-1]):
        return (
            "your tokens are the library's shifted one place right (your token t is its token t - 1): the first "
            "token you return is a start placeholder, not a draw; return the L tokens drawn, the last one included"
        )
    if L > 1 and torch.equal(tokens[:, :-1], expected[:, 1:]):
        return (
            "your tokens are the library's shifted one place left (your token t is its token t + 1): the token "
            "drawn from the class token's logits, token 0, is missing from what you return"
        )
    with torch.no_grad():
        logits = model(tokens, labels)  # (n, L, V): logits[:, t] sees the class token and tokens[:, :t]
        null = model(tokens, None)  # the same without the labels: the null class token
        start = model.token_emb(torch.zeros(n, 1, dtype=torch.long))  # a token 0 where the class token belongs
        no_class = model.head(model.transformer(torch.cat([start, model.token_emb(tokens[:, :-1])], 1)))
    warp = warp_logits
    hypotheses = []
    if temperature != 1.0:
        hypotheses += [
            (
                lambda t: warp(logits[:, t], 1.0),
                "the temperature is not applied: divide the logits by it before the softmax",
            ),
            (
                lambda t: (logits[:, t] * temperature).softmax(-1),
                "the logits were multiplied by the temperature: divide them by it",
            ),
        ]
    hypotheses += [
        (
            lambda t: warp(null[:, t], temperature),
            "the labels were ignored: your tokens are the draws of the null class; pass 0 feeds the class token "
            "of each row's label, model.embed(empty tokens, labels)",
        ),
        (
            lambda t: warp(no_class[:, t], temperature),
            "the class token was not fed: pass 0 must feed model.embed(empty tokens, labels), the class token "
            "alone, whose logits give token 0",
        ),
        (
            lambda t: warp(logits[:, 0], temperature),
            "every token was drawn from the first position's logits (row 0, the class token's): draw from the "
            "last position's, logits[:, -1]",
        ),
    ]
    if torch.equal(tokens, logits.argmax(-1)):
        return (
            "every token is the most likely one (argmax): draw it from the distribution instead, with "
            "sample_from_probs(probs, generator)"
        )
    for policy, cause in hypotheses:
        if _replays(tokens, policy, seed):
            return cause
    for t, (fed, cache, held) in enumerate(calls):
        if t > 0 and cache is None and fed == 1:
            return (
                f"pass {t} ran the transformer without the cache: the newest token then sits at position 0 with "
                "nothing before it; pass the same cache on every pass (cache=cache)"
            )
        if t > 0 and cache is not None and cache is not calls[0][1]:
            return (
                f"pass {t} used another cache than pass 0 (a new cache every pass?): the newest token then sees "
                "nothing before it; make one cache before the loop and pass it every time"
            )
        if cache is not None and held != t:
            return (
                f"pass {t} found {held} positions in the cache, not {t} (the class token, then one per earlier "
                "pass): each pass feeds only its new position, once, to the same cache"
            )
    return ""


@checked(compares_with=(RasterGPT.sample_tokens,))
def check_sample_tokens(sample_tokens):
    """sample_tokens(model, labels, temperature=..., generator=...) -> tokens (n, seq_len) must draw the very
    tokens RasterGPT.sample_tokens draws with the same generator, feeding one position per pass via the cache."""
    for L, V, labels, temperature, model_seed, seed in CASES:
        model = tiny_gpt(L, V, model_seed)
        labels = torch.tensor(labels)
        n = len(labels)
        case = f"case {n} sequences of {L} tokens, temperature {temperature}"
        library_generator = torch.Generator().manual_seed(seed)
        expected, _ = model.sample_tokens(n, labels, temperature=temperature, generator=library_generator)  # (n, L)

        calls, handle = _count_fed_positions(model)
        generator = torch.Generator().manual_seed(seed)
        try:
            with torch.no_grad():
                tokens = sample_tokens(model, labels, temperature=temperature, generator=generator)
        except ValueError as error:  # the cache or the model refused what it was fed
            raise AssertionError(
                f"{case}: the model refused an input: {error}. With the cache, pass t feeds only the newest token "
                "(the class token alone at t = 0): the cache already holds everything before it"
            ) from error
        finally:
            handle.remove()
        assert torch.is_tensor(tokens), f"sample_tokens must return a tensor of token ids, got {type(tokens).__name__}"
        assert tuple(tokens.shape) == (n, L), (
            f"{case}: expected tokens of shape {(n, L)} (one pass per token), got {tuple(tokens.shape)}"
        )
        assert len(calls) == L, (
            f"{case}: the transformer ran {len(calls)} times; the loop needs exactly {L} passes "
            "(the class token predicts token 0, then each new token predicts the next)"
        )
        tokens = tokens.long().cpu()
        assert tokens.min() >= 0 and tokens.max() < V, (
            f"{case}: token ids must lie in [0, {V}), got {int(tokens.min())} to {int(tokens.max())}"
        )
        differ = (tokens != expected).any(0).nonzero().flatten()
        if len(differ):
            t = int(differ[0])
            said = (
                f"{case}: tokens first differ at position {t} (of {L}): yours {tokens[:, t].tolist()}, "
                f"the library's {expected[:, t].tolist()}"
            )
            cause = _cause(model, labels, temperature, seed, tokens, expected, calls)
            if not cause and not torch.equal(generator.get_state(), library_generator.get_state()):
                cause = (
                    "your loop used the generator otherwise than the library, which draws each pass's tokens with "
                    "one sample_from_probs(probs, generator) call (one uniform number per row): draw with it"
                )
            if not cause:
                cause = "the random numbers were drawn as the library draws them, so the distributions differ; " + (
                    "already at pass 0: look at the class token (model.embed(empty tokens, labels)), the "
                    "temperature, and the last logits row"
                    if t == 0
                    else "pass 0 agrees, so what a later pass feeds the model is off: only the newest token, "
                    "model.token_emb(tokens[:, -1:]), with the same cache"
                )
            raise AssertionError(f"{said}: {cause}")
        fed = sum(length for length, _, _ in calls)
        cached = all(cache is not None for _, cache, _ in calls)
        assert cached and fed == L, (
            f"{case}: same tokens, but the transformer was fed {fed} positions over {L} passes "
            f"({'with' if cached else 'not always with'} a cache); the KV-cached loop feeds "
            f"{L}: the class token once, then only the newest token, every pass with the cache"
        )
