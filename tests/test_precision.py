"""The GPU paths, proven on the CPU: mixed precision, quantisation in fp32, no float64 or missing op on MPS.

fit(precision="bf16"/"fp16") runs the same autocast (and, for fp16, GradScaler) code on the CPU that a
CUDA GPU runs, so every CI run trains every registered model the way Colab and lab GPUs do.
"""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TEST_DEVICE

from minigen import registry
from minigen.arnet import ARNet, ARNetConfig, generate_ar, sparse_ar_coeffs, train_arnet
from minigen.data import ImageDataset, load_images, make_loader
from minigen.metrics import DigitClassifier, classifier_outputs, sample_quality
from minigen.tokenizers import VQVAE, MultiScaleVQ, MultiScaleVQConfig, VQConfig, area_resize
from minigen.train import fit, pick_precision

IMAGE_MODELS = [name for name in registry.names() if registry.data_spec(name) is not None]


def few_images(name: str, n: int = 48) -> ImageDataset:
    return load_images(**registry.data_spec(name), limit=n)


def smoke_model(name: str, **config):
    spec = registry.recipe(name, "smoke")
    model = spec["model"]
    if config:
        model = type(model)(dataclasses.replace(model.config, **config))
    return model


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_every_image_model_trains_under_mixed_precision(name, precision):
    torch.manual_seed(0)
    # restarts fire at step 3 of 5 (in the old code, at the multi-scale quantizer's third call, scale 3 of 6)
    extra = {"restart_every": 3} if name in ("vq", "msvq") else {}
    model = smoke_model(name, **extra)
    loader = make_loader(few_images(name), 16)
    history = fit(model, loader, steps=5, lr=1e-3, device=TEST_DEVICE, precision=precision, progress=False)
    assert history["precision"] == precision
    assert np.isfinite(history["loss"]).all() and len(history["loss"]) == 5
    if name in ("vq", "msvq"):
        assert int(model.quantizer.restarted) > 0, "the dead-code restart never ran under autocast"
    assert all(p.dtype == torch.float32 for p in model.parameters()), "weights must stay fp32"
    # and its sampler runs under autocast too, returning float images in [0, 1]
    if hasattr(model, "sample"):
        labels = torch.arange(2) if getattr(model.config, "n_classes", 0) else None
        with torch.autocast(TEST_DEVICE.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16):
            images = model.sample(2, labels, generator=torch.Generator().manual_seed(0))
        assert images.dtype == torch.float32 and images.shape[0] == 2
        assert torch.isfinite(images).all() and 0 <= float(images.min()) and float(images.max()) <= 1


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_metrics_classifier_and_arnet_train_under_mixed_precision(precision):
    torch.manual_seed(0)
    history = fit(
        DigitClassifier(),
        make_loader(load_images(limit=64), 16),
        steps=3,
        device=TEST_DEVICE,
        precision=precision,
        progress=False,
    )
    assert np.isfinite(history["loss"]).all()
    series = generate_ar(sparse_ar_coeffs({1: 0.5}), 500, seed=0)
    net = ARNet(ARNetConfig(p=5))
    original_fit = fit

    def fit_at_precision(*args, **kwargs):
        return original_fit(*args, precision=precision, **kwargs)

    import minigen.arnet

    mp = pytest.MonkeyPatch()
    mp.setattr(minigen.arnet, "fit", fit_at_precision)
    try:
        history = train_arnet(net, series, steps=5, batch_size=64)
    finally:
        mp.undo()
    assert history["precision"] == precision and np.isfinite(history["loss"]).all()
    assert np.isfinite(net.sample(2, length=10).numpy()).all()


def test_automatic_precision_follows_the_device(monkeypatch):
    assert pick_precision("cpu") == "fp32" and pick_precision("cpu", "bf16") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        pick_precision("cpu", "fp8")
    # a T4 or V100: bf16 only through emulation, which torch counts unless told not to
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert pick_precision("cuda") == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # an A100
    assert pick_precision("cuda") == "bf16"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls", [VQVAE, MultiScaleVQ])
def test_tokens_encoded_under_autocast_equal_fp32_tokens(cls, dtype):
    """A token model trained on images encodes them inside its (autocast) training step: those tokens
    must be the ones fp32 encoding gives at test and sampling time."""
    torch.manual_seed(0)
    config = (MultiScaleVQConfig if cls is MultiScaleVQ else VQConfig)(channels=16, n_res=1)
    tokenizer = cls(config)
    fit(tokenizer, make_loader(load_images(limit=256), 32), steps=20, device="cpu", progress=False)
    images = load_images("mnist-subset", "test", limit=200).images
    reference = tokenizer.encode(images)
    with torch.no_grad():
        z = tokenizer.encoder(images)  # fp32 latents
    quantize = tokenizer.quantize if cls is MultiScaleVQ else lambda z: [tokenizer.quantizer(z)[1]]
    with torch.autocast("cpu", dtype=dtype):
        mixed = tokenizer.encode(images)  # what TokenGPT.loss does with a batch of images
        codes = quantize(z)[0]  # the quantiser inside a training step: distances and argmin in fp32
    flat = (lambda t: torch.cat([c.flatten(1) for c in t], 1)) if cls is MultiScaleVQ else (lambda t: t)
    assert torch.equal(flat(mixed), flat(reference))
    assert torch.equal(flat(codes), flat(reference))


class OnAnAccelerator(torch.Tensor):
    """A CPU tensor that behaves like one on MPS as far as dtypes go: making a float64 tensor from it
    fails, as MPS does, until it has been moved to the host with .cpu()."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.cpu:
            return args[0].as_subclass(torch.Tensor).clone()
        out = super().__torch_function__(func, types, args, kwargs or {})
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, cls) and t.dtype == torch.float64:
                raise TypeError(f"{func.__name__} made a float64 tensor on the accelerator (MPS has no float64)")
        return out


def test_the_metrics_path_makes_no_float64_on_the_device(monkeypatch):
    classifier = DigitClassifier().eval()
    features = DigitClassifier.features
    monkeypatch.setattr(
        DigitClassifier, "features", lambda self, images: features(self, images).as_subclass(OnAnAccelerator)
    )
    images = torch.rand(20, 1, 28, 28)
    feats, preds = classifier_outputs(classifier, images)
    assert type(feats) is torch.Tensor and feats.dtype == torch.float64
    out = sample_quality(classifier, images, torch.rand(20, 1, 28, 28), labels=torch.arange(20) % 10)
    assert np.isfinite(out["fid"])
    # the stub itself can fail: double() before cpu() is refused
    with pytest.raises(TypeError, match="float64"):
        features(classifier, images).as_subclass(OnAnAccelerator).double()


def refuse_non_divisible_pooling(monkeypatch):
    """MPS implements adaptive average pooling only when the input size is a multiple of the output size."""
    pool = F.adaptive_avg_pool2d

    def mps_like(x, output_size):
        size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        if any(i % o for i, o in zip(x.shape[-2:], size)):
            raise RuntimeError("Adaptive pool MPS: input sizes must be divisible by output sizes.")
        return pool(x, output_size)

    monkeypatch.setattr(F, "adaptive_avg_pool2d", mps_like)
    monkeypatch.setattr(torch._C._nn, "adaptive_avg_pool2d", mps_like)


def test_multiscale_quantizer_avoids_pooling_that_mps_lacks(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 7, 7)
    expected = {s: F.interpolate(x, size=(s, s), mode="area") for s in (1, 2, 3, 4, 5, 7)}
    refuse_non_divisible_pooling(monkeypatch)
    with pytest.raises(RuntimeError, match="divisible"):
        F.interpolate(x, size=(5, 5), mode="area")  # the patch bites where the old code called it
    for s, want in expected.items():
        torch.testing.assert_close(area_resize(x, s), want)  # same numbers, computed without pooling
    msvq = MultiScaleVQ(MultiScaleVQConfig(channels=8, n_res=1))
    images = torch.rand(2, 1, 28, 28)
    codes = msvq.encode(images)
    assert [c.shape[-1] for c in codes] == list(msvq.config.scales)
    msvq.train()
    msvq(images)[2].backward()  # training too
    f_hat = msvq.f_hat(codes)
    assert msvq.next_scale_input(f_hat, 4).shape == (2, 16, 5, 5)
