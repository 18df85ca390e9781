"""Checks for notebook 07's implement-it exercise: speculative sampling's verify step.

The learner writes `verify(p, q, drafts, dice) -> (accepted, next_token)`, a simplified form of
`minigen.speculative.verify` (no relaxed acceptance, always a position for the bonus token). Both draw their
randomness the same way: one `dice.coin` over all (B, g) guesses, then one `dice.categorical` over B rows. A
recording Dice sees what each function asked for, so a wrong answer is named by its cause, not only its effect.
"""

from __future__ import annotations

import torch

from minigen import speculative as S
from minigen.exercises import checked


class _RecordingDice(S.Dice):
    """A Dice that remembers every probability it was asked to flip or draw from."""

    def __init__(self, seed: int):
        super().__init__(torch.Generator().manual_seed(seed))
        self.coins, self.draws = [], []

    def coin(self, prob):
        self.coins.append(torch.as_tensor(prob).detach().clone())
        return super().coin(prob)

    def categorical(self, probs):
        self.draws.append(torch.as_tensor(probs).detach().clone())
        return super().categorical(probs)


def _cases():
    """Small deterministic cases (B rows of g guesses over V tokens): random p and q, rows where the draft is the
    target (every guess kept: the bonus token), and rows where q is far from p (early rejections)."""
    gen = torch.Generator().manual_seed(0)
    cases = []
    for case, (B, g, V) in enumerate([(6, 1, 5), (8, 3, 6), (8, 4, 8), (12, 5, 4)]):
        p = torch.rand(B, g + 1, V, generator=gen, dtype=torch.float64) ** 3
        q = torch.rand(B, g, V, generator=gen, dtype=torch.float64) ** 3
        q[: B // 4] = p[: B // 4, :g]  # the draft equals the target: every guess kept
        q[B // 4 : B // 2, :, 0] += 2.0  # the draft over-proposes token 0: rejections
        p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
        drafts = S.Dice(gen).categorical(q)  # (B, g): guesses drawn from q
        cases.append((case, p, q, drafts))
    return cases


def _pair(result):
    if isinstance(result, tuple) and len(result) >= 2:
        return torch.as_tensor(result[0]), torch.as_tensor(result[1])
    raise AssertionError(f"verify must return (accepted, next_token), got {type(result).__name__}")


@checked(compares_with=(S.verify,))
def check_verify(verify):
    """verify(p (B, g+1, V), q (B, g, V), drafts (B, g), dice) -> (accepted (B,), next_token (B,)) must agree with
    minigen.speculative.verify for the same random numbers."""
    for case, p, q, drafts in _cases():
        for seed in range(3):
            ref_dice, dice = _RecordingDice(seed), _RecordingDice(seed)
            ref = S.verify(p, q, drafts, ref_dice)
            accepted, next_token = _pair(verify(p.clone(), q.clone(), drafts.clone(), dice))
            where = f"case {case} (B={drafts.shape[0]}, g={drafts.shape[1]}, V={p.shape[-1]}), seed {seed}"
            assert len(dice.coins) == 1 and dice.coins[0].shape == drafts.shape, (
                f"{where}: flip all g coins with one dice.coin(probs) call, probs of shape {tuple(drafts.shape)}; "
                f"you made {len(dice.coins)} call(s) with shapes {[tuple(c.shape) for c in dice.coins]}"
            )
            mine_coins, ref_coins = dice.coins[0].double(), ref_dice.coins[0].double()
            if not torch.allclose(mine_coins, ref_coins, atol=1e-9):
                p_x = p[:, :-1].gather(-1, drafts[..., None])[..., 0]
                q_x = q.gather(-1, drafts[..., None])[..., 0]
                b = int((~torch.isclose(mine_coins, ref_coins, atol=1e-9)).any(-1).nonzero()[0])
                inverted = torch.allclose(mine_coins, (q_x / p_x).clamp(max=1.0), atol=1e-9)
                hint = " (you use min(1, q/p): the ratio is p/q)" if inverted else ""
                raise AssertionError(
                    f"{where}: your acceptance probabilities differ from min(1, p(x)/q(x)){hint}: "
                    f"row {b} {[round(v, 4) for v in mine_coins[b].tolist()]}, "
                    f"the library's {[round(v, 4) for v in ref_coins[b].tolist()]}"
                )
            assert accepted.shape == ref.accepted.shape, (
                f"{where}: accepted has shape {tuple(accepted.shape)}, expected {tuple(ref.accepted.shape)}"
            )
            wrong = (accepted.long() != ref.accepted).nonzero()
            if len(wrong):
                b = int(wrong[0])
                raise AssertionError(
                    f"{where}, row {b}: you accept {int(accepted[b])} guesses, the library {int(ref.accepted[b])}; "
                    "count the guesses kept before the first rejection (none after it counts)"
                )
            assert len(dice.draws) == 1 and dice.draws[0].shape == (drafts.shape[0], p.shape[-1]), (
                f"{where}: draw the next tokens with one dice.categorical(dist) call, dist of shape "
                f"{(drafts.shape[0], p.shape[-1])}; you made {len(dice.draws)} call(s) with shapes "
                f"{[tuple(d.shape) for d in dice.draws]}"
            )
            mine, theirs = dice.draws[0].double(), ref_dice.draws[0].double()
            g = drafts.shape[1]
            differ = ~torch.isclose(mine, theirs, atol=1e-6).all(-1)  # (B,)
            bonus = differ & (ref.accepted == g)
            if bonus.any():
                b = int(bonus.nonzero()[0])
                raise AssertionError(
                    f"{where}, row {b}: all {g} guesses were kept, so the next token is the bonus token, drawn from "
                    "the target's distribution p[:, g] after the last guess"
                )
            sums = mine.sum(-1)
            bad = (sums - 1).abs() > 1e-6
            if bad.any():
                b = int(bad.nonzero()[0])
                raise AssertionError(
                    f"{where}, row {b}: the distribution you draw the next token from sums to {float(sums[b]):.3f}, "
                    "not 1: normalise the residual max(0, p - q)"
                )
            if differ.any():
                b = int(differ.nonzero()[0])
                raise AssertionError(
                    f"{where}, row {b}: you draw the next token from another distribution; guess "
                    f"{int(ref.accepted[b])} was the first rejected, so it comes from norm(max(0, p - q)) there"
                )
            assert torch.equal(next_token.long(), ref.next_token), (
                f"{where}: next tokens {next_token.tolist()}, the library's {ref.next_token.tolist()}"
            )
