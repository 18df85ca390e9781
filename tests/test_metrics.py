import math

import pytest
import torch

from minigen.data import ImageDataset, make_loader
from minigen.metrics import (
    DigitClassifier,
    SampleScorer,
    Yardstick,
    bits_per_dim,
    classifier_outputs,
    draw,
    frechet_distance,
    nll_entry,
    quality_data,
    sample_quality,
)
from minigen.train import fit


def test_frechet_distance_matches_the_closed_form_for_gaussians():
    torch.manual_seed(0)
    n, d = 200000, 3
    mu_a, mu_b = torch.tensor([0.0, 1.0, -1.0]), torch.tensor([0.5, 1.0, 0.0])
    sd_a, sd_b = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([1.0, 1.0, 1.5])
    a = mu_a + sd_a * torch.randn(n, d)
    b = mu_b + sd_b * torch.randn(n, d)
    # diagonal covariances commute: FD = |mu_a - mu_b|^2 + sum (sd_a - sd_b)^2
    exact = float((mu_a - mu_b).square().sum() + (sd_a - sd_b).square().sum())
    assert frechet_distance(a, b) == pytest.approx(exact, abs=0.03)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # a rotation of both sets leaves the distance unchanged
    q, _ = torch.linalg.qr(torch.randn(d, d))
    assert frechet_distance(a @ q, b @ q) == pytest.approx(frechet_distance(a, b), rel=1e-6)
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(a, b[:, :2])


def test_classifier_learns_and_sample_quality_reports_accuracy():
    torch.manual_seed(0)
    images = torch.zeros(400, 1, 28, 28)
    labels = torch.arange(400) % 4
    for i in range(400):  # four classes: a bar in one of four places, with noise
        k = int(labels[i])
        images[i, 0, 6 * k + 2 : 6 * k + 6, 4:24] = 1.0
    images = (images + 0.2 * torch.rand_like(images)).clamp(0, 1)
    model = DigitClassifier(n_classes=4)
    fit(model, make_loader(ImageDataset(images[:300], labels[:300]), 32), steps=60, lr=2e-3, progress=False)
    _, preds = classifier_outputs(model, images[300:])
    assert (preds == labels[300:]).float().mean() > 0.95
    q = sample_quality(model, images[300:], images[:300], labels=labels[300:])
    assert q["class_accuracy"] > 0.95 and q["n"] == 100
    wrong = sample_quality(model, images[300:], images[:300], labels=(labels[300:] + 1) % 4)
    assert wrong["class_accuracy"] < 0.05
    noise = sample_quality(model, torch.rand(100, 1, 28, 28), images[:300])
    assert noise["fid"] > 10 * q["fid"]
    with pytest.raises(ValueError, match="28, 28"):
        model.features(torch.rand(2, 1, 14, 14))


def test_bits_per_dim():
    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        bits_per_dim(1.0, 0)


def test_yardstick_scores_samples_by_their_requested_labels():
    from minigen.data import load_images

    ys = Yardstick("smoke", torch.device("cpu"))
    test = load_images("mnist-subset", "test")
    by_class = [test.images[test.labels == k] for k in range(10)]

    def real_digits(
        count, labels, generator, shift=0
    ):  # a perfect "model": unseen test digits of the asked class (+ shift)
        picks = []
        for k in labels.tolist():
            used[k] += 1
            picks.append(by_class[(k + shift) % 10][used[k] % 50])
        return torch.stack(picks)

    used = [0] * 10
    images, labels = draw(real_digits, 200, 10, "cpu", batch=30)
    assert labels.tolist() == [i % 10 for i in range(200)]
    right = ys.score(images, labels, dict(name="mnist-subset"))
    used = [0] * 10
    wrong = ys.score(*draw(lambda k, y, g: real_digits(k, y, g, shift=1), 200, 10, "cpu"), dict(name="mnist-subset"))
    noise = ys.score(torch.rand(200, 1, 28, 28), labels, dict(name="mnist-subset"))
    assert right["class_accuracy"] > 0.85 and wrong["class_accuracy"] < 0.15
    train = load_images("mnist-subset", "train")
    train_200 = torch.cat([train.images[train.labels == k][:20] for k in range(10)])  # 20 per class
    train_200 = ys.score(train_200, labels, dict(name="mnist-subset"))
    assert right["fid"] < 1.5 * train_200["fid"] < noise["fid"] / 10  # 200 digits: FID's small-sample bias
    # the same digits in another order: FID ignores labels (equal up to the rounding of summing in another order)
    assert right["fid"] == pytest.approx(wrong["fid"], rel=1e-6)
    # 14x14 binarised digits are scaled to 28x28 and judged against test digits of their own kind
    small = dict(name="mnist-subset", binarize=True, size=14)
    ys.score(load_images(split="test", **small).images[:100], test.labels[:100], small)
    assert set(ys.report["floor_fid"]) == {"grey 28px", "binarised 14px"}
    # an unconditional model is asked without labels and gets no class accuracy
    images, labels = draw(lambda k, y, g: torch.rand(k, 1, 28, 28, generator=g), 130, 0, "cpu", batch=50)
    assert labels is None and images.shape == (130, 1, 28, 28)
    assert set(ys.score(images, labels, dict(name="mnist-subset"))) == {"fid"}


def test_the_sample_scorer_makes_no_yardstick_until_it_scores_and_models_get_their_own_test_data():
    from minigen import registry

    scorer = SampleScorer("smoke", "cpu", samples=0, previews={})
    assert scorer(("token", "KV cache"), None, 10, dict(name="mnist-subset")) == {}
    assert scorer.yardstick is None and scorer.report is None and scorer.previews == {}
    with pytest.raises(ValueError, match="samples"):
        SampleScorer("smoke", "cpu", samples=-1)
    binary = registry.recipe("pixelcnn", "smoke")["model"]
    assert quality_data("pixelcnn", binary)["binarize"] == (binary.config.n_levels == 2)
    assert nll_entry(torch.nn.Linear(1, 1), dict(name="mnist-subset")) == {}  # no likelihood, no NLL
