"""Notebook 04's implement-it check: the worked solution passes, the typical mistakes are caught."""

import pytest
import torch
import torch.nn.functional as F
from conftest import solution_function

from minigen.exercises.scale_ar import check_multiscale_quantize
from minigen.tokenizers import area_resize


def residual_loop(z, codebook, scales, phi, phi_mix, *, down=None, up_mode="bicubic", subtract=True, upsample="codes"):
    """The residual loop with switches that plant one mistake each."""
    down = down or area_resize
    B, D, g, _ = z.shape
    residual, f_hat, codes = z, torch.zeros_like(z), []
    for k, s in enumerate(scales):
        small = down(residual, s)
        flat = small.permute(0, 2, 3, 1).reshape(-1, D)
        idx = torch.cdist(flat, codebook).argmin(1).view(B, s, s)
        source = codebook[idx].permute(0, 3, 1, 2) if upsample == "codes" else small
        up = F.interpolate(source, size=(g, g), mode=up_mode, align_corners=False) if s != g else source
        contribution = (1 - phi_mix) * up + phi_mix * phi[k](up)
        f_hat = f_hat + contribution
        if subtract:
            residual = residual - contribution
        codes.append(idx)
    return codes, f_hat


def test_the_worked_solution_passes_and_planted_mistakes_fail():
    assert check_multiscale_quantize(solution_function("04_scale_ar.ipynb", "multiscale_quantize")) is True
    assert check_multiscale_quantize(residual_loop) is True  # cdist instead of the expanded distance is fine
    area = lambda x, s: F.interpolate(x, size=(s, s), mode="area")  # noqa: E731
    assert check_multiscale_quantize(lambda *a: residual_loop(*a, down=area)) is True  # the same numbers
    mistakes = {
        "residual never subtracted": lambda *a: residual_loop(*a, subtract=False),
        "residual upsampled instead of the codes": lambda *a: residual_loop(*a, upsample="residual"),
        "bilinear upsampling": lambda *a: residual_loop(*a, up_mode="bilinear"),
        "bilinear downsampling": lambda *a: residual_loop(
            *a, down=lambda x, s: F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        ),
        "scales fine to coarse": lambda z, cb, scales, phi, rho: residual_loop(z, cb, scales[::-1], phi[::-1], rho),
        "phi forgotten": lambda z, cb, scales, phi, rho: residual_loop(z, cb, scales, phi, 0.0),
        "f_hat left at zero": lambda *a: (residual_loop(*a)[0], residual_loop(*a)[1] * 0),
    }
    for name, wrong in mistakes.items():
        with pytest.raises(AssertionError):
            check_multiscale_quantize(wrong)
            pytest.fail(f"the check let through: {name}")


def test_the_stub_is_reported_not_raised(capsys):
    def multiscale_quantize(z, codebook, scales, phi, phi_mix):
        raise NotImplementedError

    assert check_multiscale_quantize(multiscale_quantize) is False
    assert "not implemented yet" in capsys.readouterr().out
