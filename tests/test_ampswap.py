import pytest
import torch

from fslib.augment.ampswap import amplitude_swap, draw_partners, mix_amplitude


def _images(n=6, c=3, h=8, w=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g, dtype=dtype)


def test_draw_partners_no_fixed_points_and_a_permutation():
    g = torch.Generator().manual_seed(1)
    partners = draw_partners(50, g, p=1.0)
    assert (partners != torch.arange(50)).all()
    assert sorted(partners.tolist()) == list(range(50))  # every image lends exactly once


def test_draw_partners_selects_a_fraction_p():
    g = torch.Generator().manual_seed(2)
    n, p = 4000, 0.3
    changed = (draw_partners(n, g, p) != torch.arange(n)).double().mean().item()
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(changed - p) < 4 * sd


def test_mix_amplitude_takes_the_source_amplitude_and_keeps_the_phase():
    x, s = _images(seed=0), _images(seed=1)
    y = mix_amplitude(x, s, alpha=1.0)
    fx, fs, fy = torch.fft.fft2(x), torch.fft.fft2(s), torch.fft.fft2(y)
    assert torch.allclose(fy.abs(), fs.abs(), atol=1e-10)
    # same phase: the unit phasors agree (all amplitudes of these random images are > 0)
    assert fx.abs().min() > 1e-6 and fs.abs().min() > 1e-6
    assert torch.allclose(fy / fy.abs(), fx / fx.abs(), atol=1e-8)


def test_mix_amplitude_partial_weight_is_a_convex_mix_of_amplitudes():
    x, s = _images(seed=3), _images(seed=4)
    alpha = 0.3
    y = mix_amplitude(x, s, alpha=alpha)
    want = (1 - alpha) * torch.fft.fft2(x).abs() + alpha * torch.fft.fft2(s).abs()
    assert torch.allclose(torch.fft.fft2(y).abs(), want, atol=1e-10)


def test_mix_amplitude_is_per_channel():
    x, s = _images(seed=5), _images(seed=6)
    s_perm = s[:, [2, 0, 1]]  # permuting the source's channels permutes the output amplitudes
    y = mix_amplitude(x, s_perm)
    assert torch.allclose(torch.fft.fft2(y).abs(), torch.fft.fft2(s_perm).abs(), atol=1e-10)
    assert not torch.allclose(torch.fft.fft2(y).abs(), torch.fft.fft2(s).abs(), atol=1e-3)


def test_p_zero_is_the_identity_for_uint8_and_float():
    g = torch.Generator().manual_seed(0)
    x8 = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8, generator=g)
    assert torch.equal(amplitude_swap(x8, g, p=0.0), x8)
    xf = _images(dtype=torch.float32)
    assert torch.equal(amplitude_swap(xf, g, p=0.0), xf)


def test_full_swap_gives_each_image_its_partners_amplitude():
    x = _images(n=7, seed=7)
    g = torch.Generator().manual_seed(11)
    partners = draw_partners(7, torch.Generator().manual_seed(11), p=1.0)
    y = amplitude_swap(x, g, p=1.0, clip=False)
    fx, fy = torch.fft.fft2(x), torch.fft.fft2(y)
    assert torch.allclose(fy.abs(), fx[partners].abs(), atol=1e-10)
    assert torch.allclose(fy / fy.abs(), fx / fx.abs(), atol=1e-8)


def test_unselected_images_are_unchanged_and_selected_ones_change():
    x = _images(n=40, seed=8, dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    partners = draw_partners(40, torch.Generator().manual_seed(3), p=0.5)
    y = amplitude_swap(x, g, p=0.5)
    same = partners == torch.arange(40)
    assert 0 < int(same.sum()) < 40
    assert torch.equal(y[same], x[same])
    assert ((y[~same] - x[~same]).abs().flatten(1).amax(1) > 1e-3).all()


def test_deterministic_for_a_seed_and_seed_dependent():
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a = amplitude_swap(x, torch.Generator().manual_seed(5), p=0.7, alpha=0.8)
    b = amplitude_swap(x, torch.Generator().manual_seed(5), p=0.7, alpha=0.8)
    c = amplitude_swap(x, torch.Generator().manual_seed(6), p=0.7, alpha=0.8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_output_dtype_and_range():
    g = torch.Generator().manual_seed(0)
    x8 = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=g)
    y8 = amplitude_swap(x8, g, p=1.0)
    assert y8.dtype == torch.uint8 and y8.shape == x8.shape
    xf = _images(dtype=torch.float32)
    yf = amplitude_swap(xf, g, p=1.0)
    assert yf.dtype == torch.float32 and yf.min() >= 0.0 and yf.max() <= 1.0
    raw = amplitude_swap(xf, torch.Generator().manual_seed(0), p=1.0, clip=False)
    assert raw.min() < 0.0 or raw.max() > 1.0  # a swap leaves [0, 1]: clipping does something


def test_uint8_result_matches_float_path_up_to_quantisation():
    x8 = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    y8 = amplitude_swap(x8, torch.Generator().manual_seed(2), p=1.0)
    yf = amplitude_swap(x8.float() / 255, torch.Generator().manual_seed(2), p=1.0)
    assert (y8.float() / 255 - yf).abs().max() <= 0.5 / 255 + 1e-6


def test_bad_arguments_are_named():
    x = _images()
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="p must"):
        amplitude_swap(x, g, p=1.5)
    with pytest.raises(ValueError, match="alpha must"):
        amplitude_swap(x, g, alpha=-0.1)
    with pytest.raises(TypeError, match="uint8 or floating"):
        amplitude_swap(x.long(), g)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        amplitude_swap(x[0], g)
    with pytest.raises(TypeError, match="generator"):
        draw_partners(3, 0)


def test_ampswap_augment_is_amplitude_swap_with_the_module_defaults():
    from fslib.augment.ampswap import AMPSWAP_ALPHA, AMPSWAP_P, ampswap_augment

    x = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    got = ampswap_augment(x, torch.zeros(10, dtype=torch.long), torch.Generator().manual_seed(9), 1)
    want = amplitude_swap(x, torch.Generator().manual_seed(9), alpha=AMPSWAP_ALPHA, p=AMPSWAP_P)
    assert torch.equal(got, want) and not torch.equal(got, x)
    with pytest.raises(TypeError, match="uint8"):
        ampswap_augment(x.float(), None, torch.Generator(), 1)
