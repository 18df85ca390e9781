"""Checks for notebook 03's implement-it exercise: the KV-cached sampling loop of a raster-order GPT.

The learner writes `sample_tokens(model, labels, *, temperature=1.0, generator=None)`: prefill the class
token into the cache, then one new token per pass, each drawn from the last position's logits at the given
temperature; what `RasterGPT.sample_tokens` does without guidance, top-k and top-p. The check runs both on
small untrained models built on the CPU (random head, so every position has its own peaked distribution)
and compares the tokens drawn with the same generator, and the number of positions fed to the transformer.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from minigen.exercises import checked
from minigen.raster import RasterGPT

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
    """Record, for every call of model.transformer, how many positions it was fed and whether with a cache."""
    calls = []

    def hook(module, args, kwargs):
        x = args[0] if args else kwargs.get("x")
        cache = args[2] if len(args) > 2 else kwargs.get("cache")
        calls.append((int(x.shape[1]), cache is not None))

    return calls, model.transformer.register_forward_pre_hook(hook, with_kwargs=True)


@checked
def check_sample_tokens(sample_tokens):
    """sample_tokens(model, labels, temperature=..., generator=...) -> tokens (n, seq_len) must draw the very
    tokens RasterGPT.sample_tokens draws with the same generator, feeding one position per pass via the cache."""
    for L, V, labels, temperature, model_seed, seed in CASES:
        model = tiny_gpt(L, V, model_seed)
        labels = torch.tensor(labels)
        n = len(labels)
        case = f"case {n} sequences of {L} tokens, temperature {temperature}"
        expected, _ = model.sample_tokens(
            n, labels, temperature=temperature, generator=torch.Generator().manual_seed(seed)
        )  # (n, L)

        calls, handle = _count_fed_positions(model)
        try:
            with torch.no_grad():
                tokens = sample_tokens(
                    model, labels, temperature=temperature, generator=torch.Generator().manual_seed(seed)
                )
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
        differ = (tokens.long().cpu() != expected).any(0).nonzero().flatten()
        if len(differ):
            t = int(differ[0])
            raise AssertionError(
                f"{case}: tokens first differ at position {t} (of {L}): yours {tokens[:, t].tolist()}, "
                f"the library's {expected[:, t].tolist()}. Typical causes: feeding a token at the wrong position "
                "(the cache already holds the class token and the tokens before the newest), sampling from a "
                "logits row other than the last, forgetting to divide by the temperature, or drawing with "
                "something other than sample_from_probs(probs, generator)"
            )
        fed = sum(length for length, _ in calls)
        assert all(cached for _, cached in calls) and fed == L, (
            f"{case}: same tokens, but the transformer was fed {fed} positions over {L} passes "
            f"({'with' if all(c for _, c in calls) else 'not always with'} a cache); the KV-cached loop feeds "
            f"{L}: the class token once, then only the newest token, every pass with the cache"
        )
