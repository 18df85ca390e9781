import pytest
import torch

from minigen.data import ImageDataset, make_loader
from minigen.tokenizers import VQVAE, AEConfig, ContinuousAE, VectorQuantizer, VQConfig, codebook_usage
from minigen.train import fit


def tiny(**kw):
    torch.manual_seed(0)
    cfg = dict(channels=8, n_res=1, latent_dim=4, n_codes=16)
    cfg.update(kw)
    return VQVAE(VQConfig(**cfg))


def test_encode_decode_shapes_and_ranges():
    vq = tiny().eval()
    images = torch.rand(5, 1, 28, 28)
    tokens = vq.encode(images)
    assert tokens.shape == (5, 7, 7) and tokens.dtype == torch.long
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 16
    out = vq.decode(tokens)
    assert out.shape == (5, 1, 28, 28) and 0 <= float(out.min()) and float(out.max()) <= 1
    # decode(encode(x)) is exactly what the network computes on the quantised latents
    logits, codes, _ = vq(images)
    assert torch.equal(codes, tokens)
    torch.testing.assert_close(torch.sigmoid(logits), out)


def test_quantizer_outputs_codes_and_passes_gradients_straight_through():
    torch.manual_seed(1)
    q = VectorQuantizer(n_codes=8, dim=3, restart_every=0).eval()
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    quant, codes, loss = q(z)
    # forward: every output vector is exactly its code's vector, and that code is the nearest one
    torch.testing.assert_close(quant.detach(), q.lookup(codes))
    dists = (z.detach().permute(0, 2, 3, 1)[..., None, :] - q.codebook.weight).square().sum(-1)  # (2, 4, 4, 8)
    assert torch.equal(dists.argmin(-1), codes)
    # backward: the gradient reaching z from the output is the output's gradient, unchanged
    w = torch.randn_like(quant)
    (grad,) = torch.autograd.grad((quant * w).sum(), z)
    torch.testing.assert_close(grad, w)
    # the codebook learns only through the codebook loss, the encoder through the commitment term
    loss.backward()
    assert q.codebook.weight.grad.abs().sum() > 0 and z.grad.abs().sum() > 0


def test_dead_code_restart_revives_unused_codes():
    def run(restart_every):
        torch.manual_seed(0)
        q = VectorQuantizer(n_codes=16, dim=2, restart_every=restart_every, dead_below=1.0).train()
        with torch.no_grad():
            q.codebook.weight.fill_(100.0)  # 15 codes far away from the data: nobody picks them
            q.codebook.weight[0] = 0.0
        for _ in range(20):
            q(torch.randn(8, 2, 4, 4))  # 128 vectors per step
        return q, codebook_usage(q(torch.randn(8, 2, 4, 4))[1], 16)

    q_off, usage_off = run(0)
    assert usage_off["used_fraction"] == 1 / 16 and int(q_off.restarted) == 0
    q_on, usage_on = run(5)
    assert int(q_on.restarted) >= 15
    assert usage_on["used_fraction"] > 0.75 and usage_on["perplexity"] > 8
    assert q_on.codebook.weight.abs().max() < 10  # the revived codes moved onto the data


def test_codebook_usage_statistics():
    uniform = codebook_usage(torch.arange(32) % 8, 8)
    assert uniform["perplexity"] == pytest.approx(8) and uniform["used_fraction"] == 1
    single = codebook_usage(torch.zeros(10, dtype=torch.long), 8)
    assert single["perplexity"] == pytest.approx(1) and single["used_fraction"] == 1 / 8
    assert single["counts"].tolist() == [10] + [0] * 7


def test_vqvae_learns_to_reconstruct():
    torch.manual_seed(0)
    images = torch.zeros(256, 1, 28, 28)
    for i in range(256):  # bars at 8 positions: a set a 7x7 code grid can represent
        images[i, 0, :, 3 * (i % 8) + 2 : 3 * (i % 8) + 5] = 1.0
    data = ImageDataset(images, torch.zeros(256, dtype=torch.long))
    vq = tiny(channels=16, restart_every=10)
    before = vq.evaluate(images)["mse"]
    fit(vq, make_loader(data, 32), steps=300, lr=3e-3, progress=False)
    after = vq.evaluate(images)
    assert after["mse"] < 0.05 * before and after["mse"] < 0.01


def test_bad_inputs_raise_clear_errors():
    vq = tiny().eval()
    with pytest.raises(ValueError, match="expected images"):
        vq.encode(torch.rand(2, 28, 28))
    with pytest.raises(ValueError, match="float"):
        vq.encode(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 16\)"):
        vq.decode(torch.full((1, 7, 7), 16))
    with pytest.raises(ValueError, match="expected token grids"):
        vq.decode(torch.zeros(1, 6, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible by 4"):
        VQConfig(image_size=30)


# --- the continuous autoencoder (MAR's tokenizer) ---


def tiny_ae(**kw):
    torch.manual_seed(0)
    cfg = dict(channels=8, n_res=1, latent_dim=3)
    cfg.update(kw)
    return ContinuousAE(AEConfig(**cfg))


def test_continuous_tokens_have_the_grid_shape_and_decode_to_images():
    ae = tiny_ae().eval()
    images = torch.rand(5, 1, 28, 28)
    tokens = ae.encode(images)
    assert tokens.shape == (5, 7, 7, 3) and tokens.dtype == torch.float32
    out = ae.decode(tokens)
    assert out.shape == (5, 1, 28, 28) and 0 <= float(out.min()) and float(out.max()) <= 1
    # encode hands out the posterior means divided by latent_std, and decode multiplies it back
    ae.latent_std.fill_(2.0)
    mean, _ = ae.moments(images)
    torch.testing.assert_close(ae.encode(images), mean.permute(0, 2, 3, 1) / 2.0)
    torch.testing.assert_close(ae.decode(ae.encode(images)), torch.sigmoid(ae.decoder(mean)))


def test_continuous_ae_learns_to_reconstruct_and_hands_out_unit_scale_tokens():
    torch.manual_seed(0)
    images = torch.zeros(256, 1, 28, 28)
    for i in range(256):  # bars at 8 positions, with a random brightness: a continuous factor
        images[i, 0, :, 3 * (i % 8) + 2 : 3 * (i % 8) + 5] = 0.3 + 0.7 * torch.rand(())
    data = ImageDataset(images, torch.zeros(256, dtype=torch.long))
    ae = tiny_ae(channels=16, scale_decay=0.9)
    before = ae.evaluate(images)["mse"]
    fit(ae, make_loader(data, 32), steps=300, lr=3e-3, progress=False)
    after = ae.evaluate(images)
    assert after["mse"] < 0.05 * before and after["mse"] < 0.01
    # latent_std tracked the spread of the means during training: the tokens come out near unit scale
    assert 0.8 < after["token_std"] < 1.25, after


def test_continuous_ae_bad_inputs_raise_clear_errors():
    ae = tiny_ae().eval()
    with pytest.raises(ValueError, match="expected images"):
        ae.encode(torch.rand(2, 28, 28))
    with pytest.raises(ValueError, match=r"expected continuous tokens \(B, 7, 7, 3\)"):
        ae.decode(torch.zeros(1, 7, 7, 4))
    with pytest.raises(ValueError, match="finite floats"):
        ae.decode(torch.zeros(1, 7, 7, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="finite floats"):
        ae.decode(torch.full((1, 7, 7, 3), float("nan")))
    with pytest.raises(ValueError, match="latent_dim"):
        AEConfig(latent_dim=0)
