"""Distilled decoding's flow (minigen/distilled.py): the closed-form velocity and its posterior, the noise -> token
flow drawing from the categorical it is given, and the teacher map: deterministic given the noise, and over noise
the teacher's own distribution (enumeration and chi-square on a tiny model); the student reads its noise and learns
the map, its second pass keeps the first pass's prefix, and the independent baseline draws each place's marginal."""

import dataclasses
import itertools

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_gpt
from test_speculative import chi_square_pvalue

from minigen import registry, train
from minigen.cli import main
from minigen.data import make_loader
from minigen.distilled import (
    DDStudent,
    MarginalBaseline,
    TeacherPairs,
    categorical_velocity,
    code_embeddings,
    flow_to_tokens,
    make_pairs,
    teacher_map,
)
from minigen.sampling import warp_logits
from minigen.train import fit


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


def smoke_student(**changes) -> DDStudent:
    torch.manual_seed(0)
    model = registry.recipe("dd", "smoke")["model"]
    return DDStudent(dataclasses.replace(model.config, **changes)) if changes else model


def sign_pairs(student, n, seed):
    """Pairs whose tokens depend on the noise: place i's token is 2i or 2i + 1 by the sign of its first
    coordinate. A model blind to its noise gets half of them right at best."""
    noise = torch.randn(n, student.seq_len, student.code_dim, generator=torch.Generator().manual_seed(seed))
    tokens = 2 * torch.arange(student.seq_len) + (noise[..., 0] > 0).long()  # (n, L)
    return noise, torch.arange(n) % 10, tokens


def test_the_student_reads_its_noise_and_learns_the_map_in_one_pass():
    student = smoke_student(n_embd=64, two_step_share=0.0)
    train = torch.utils.data.TensorDataset(*sign_pairs(student, 512, 0))
    history = fit(student, make_loader(train, 64), steps=300, lr=3e-3, device="cpu", progress=False)
    noise, labels, tokens = sign_pairs(student, 256, 1)  # unseen noise
    with torch.no_grad():
        known = torch.zeros(tokens.shape, dtype=torch.bool)
        accuracy = float((student.eval()(noise, known, labels).argmax(-1) == tokens).float().mean())
    assert history["loss"][-1] < 0.3 and accuracy > 0.9, (history["loss"][-1], accuracy)


def test_the_midpoint_loss_scores_only_the_tokens_still_to_draw():
    student = smoke_student(two_step_share=1.0, prefix=20).eval()
    noise, labels, tokens = sign_pairs(student, 4, 0)
    mid, known = student.midpoint(noise, tokens)
    assert known[:, :20].all() and not known[:, 20:].any()
    torch.testing.assert_close(mid[:, :20], student.codes()[tokens[:, :20]])
    assert torch.equal(mid[:, 20:], noise[:, 20:])
    logits = student(mid, known, labels)
    expected = F.cross_entropy(logits[:, 20:].transpose(1, 2), tokens[:, 20:])
    torch.testing.assert_close(student.loss((noise, labels, tokens)), expected)


def test_student_sampling_is_seeded_and_its_second_pass_keeps_the_prefix():
    student = smoke_student(prefix=21).eval()
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    images = student.sample(3, torch.tensor([1, 2, 3]), generator=g())
    assert images.shape == (3, 1, 28, 28) and 0 <= float(images.min()) and float(images.max()) <= 1
    assert torch.equal(images, student.sample(3, torch.tensor([1, 2, 3]), generator=g()))
    _, trace = student.sample(3, torch.tensor([1, 2, 3]), steps=2, generator=g(), return_trace=True)
    first, second = trace["tokens"]  # (3, L) each
    assert trace["passes"] == 2 and torch.equal(first[:, :21], second[:, :21])
    assert torch.equal(first, student.sample(3, torch.tensor([1, 2, 3]), generator=g(), return_tokens=True).flatten(1))
    with pytest.raises(ValueError, match="steps must be 1 or 2"):
        student.sample(2, torch.tensor([0, 1]), steps=3)
    with pytest.raises(ValueError, match="prefix"):
        smoke_student(prefix=49)
    with pytest.raises(ValueError, match="expected states"):
        student(torch.randn(2, 48, student.code_dim), torch.zeros(2, 48, dtype=torch.bool))
    with pytest.raises(ValueError, match="label"):
        student.sample(2, torch.tensor([0, 10]))


def test_the_student_trains_under_mixed_precision_on_teacher_pairs():
    teacher = registry.recipe("token", "smoke")["model"]
    student = DDStudent.from_tokenizer(teacher.tokenizer, n_layer=1, n_head=2, n_embd=32)
    pairs = TeacherPairs(teacher, 16, batch=8)
    assert pairs.pairs is None  # nothing made until an item is asked for
    noise, labels, tokens = make_pairs(teacher, 16, batch=8)
    assert torch.equal(torch.stack([pairs[i][2] for i in range(16)]), tokens)  # the same seed, the same set
    assert torch.equal(labels, torch.arange(16) % 10) and tokens.shape == (16, 49)
    for precision in ("bf16", "fp16"):
        history = fit(
            student, make_loader(pairs, 8), steps=2, lr=1e-3, device="cpu", precision=precision, progress=False
        )
        assert torch.isfinite(torch.tensor(history["loss"])).all()


def test_the_cli_says_how_a_student_is_trained(tmp_path, capsys):
    assert main(["train", "dd", "--preset", "smoke", "--out", str(tmp_path / "dd")]) == 2
    assert "learns from a teacher's samples" in capsys.readouterr().err


def test_the_marginal_baseline_draws_each_places_marginal_independently():
    teacher = registry.recipe("token", "smoke")["model"]
    baseline = MarginalBaseline(teacher.tokenizer, n_classes=2)
    tokens = torch.randint(0, 8, (400, 49), generator=torch.Generator().manual_seed(0))
    labels = torch.arange(400) % 2
    tokens[labels == 1, 0] = 5  # class 1 always has token 5 at place 0
    baseline.fit(tokens, labels)
    drawn = baseline.sample(
        2000, torch.arange(2000) % 2, generator=torch.Generator().manual_seed(1), return_tokens=True
    )
    drawn = drawn.flatten(1)
    assert (drawn[1::2, 0] == 5).all() and (drawn[::2, 0] != 5).any() and int(drawn.max()) < 8
    freq = torch.bincount(drawn[::2, 3], minlength=8).double() / 1000
    assert float((freq - baseline.probs[0, 3, :8].double()).abs().sum() / 2) < 0.08
    images = baseline.sample(4, torch.tensor([0, 1, 0, 1]), generator=torch.Generator().manual_seed(2))
    tokens = baseline.sample(
        4, torch.tensor([0, 1, 0, 1]), generator=torch.Generator().manual_seed(2), return_tokens=True
    )
    assert images.shape == (4, 1, 28, 28)
    torch.testing.assert_close(images, teacher.to_images(tokens.flatten(1)))  # decoded by the trained tokenizer


def test_train_student_follows_the_recipe_and_reuses_its_checkpoint(tmp_path, monkeypatch):
    teacher = registry.recipe("token", "smoke")["model"].eval()
    student, history = registry.student_trainer("dd")(teacher, "smoke", tmp_path / "dd.pt", "cpu")
    assert history["step"][-1] == registry.recipe("dd", "smoke")["steps"] and not student.training
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("a finished student was trained again"))
    again, _ = registry.student_trainer("dd")(teacher, "smoke", tmp_path / "dd.pt", "cpu")
    for a, b in zip(student.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="not a student"):
        registry.student_trainer("token")
