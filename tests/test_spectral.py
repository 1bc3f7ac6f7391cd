"""Properties of fslib.spectral: Fourier conventions, bands, filtering, statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fourier_probe import cosine

from fslib import spectral

SIZES = [(32, 32), (8, 8), (7, 7), (6, 9), (224, 224)]


def _rand(shape, seed=0, dtype=torch.float64):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _numpy_centred(x: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft2(x, axes=(-2, -1)), axes=(-2, -1))


def _cosine(h, w, du, dv, phase=0.3):
    """Real image ``cos(2 pi (du x / H + dv y / W) + phase)``, shape (1, 1, H, W), float64."""
    x = torch.arange(h, dtype=torch.float64)[:, None]
    y = torch.arange(w, dtype=torch.float64)[None, :]
    return torch.cos(2 * math.pi * (du * x / h + dv * y / w) + phase)[None, None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fft_round_trip(dtype):
    x = _rand((3, 3, 16, 12), dtype=dtype)
    back = spectral.ifft_centred(spectral.fft_centred(x))
    assert back.dtype == dtype
    torch.testing.assert_close(back, x, atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=0)


@pytest.mark.parametrize("h,w", SIZES[:4])
def test_fft_matches_numpy_and_dc_position(h, w):
    x = _rand((2, 3, h, w), seed=1)
    spec = spectral.fft_centred(x)
    np.testing.assert_allclose(spec.numpy(), _numpy_centred(x.numpy()), atol=1e-10)
    # DC (sum of the pixels) sits at (H//2, W//2).
    torch.testing.assert_close(spec[..., h // 2, w // 2].real, x.sum(dim=(-2, -1)))


@pytest.mark.parametrize("h,w", SIZES[:4])
def test_conjugate_partner_holds_the_conjugate(h, w):
    spec = spectral.fft_centred(_rand((2, 1, h, w), seed=2))
    torch.testing.assert_close(spectral.conjugate_mirror(spec), spec.conj())


def test_conjugate_index_even_is_n_minus_k():
    for n in (2, 8, 32, 224):
        k = torch.arange(n)
        assert torch.equal(spectral.conjugate_index(n), (n - k) % n)


def test_parseval():
    x = _rand((4, 3, 32, 32), seed=3)
    energy = spectral.fft_centred(x).abs().pow(2).sum(dim=(-2, -1)) / (32 * 32)
    torch.testing.assert_close(energy, x.pow(2).sum(dim=(-2, -1)))


@pytest.mark.parametrize("h,w", SIZES)
def test_band_masks_partition_the_spectrum(h, w):
    masks = spectral.band_masks(h, w)
    assert masks.shape == (4, h, w) and masks.dtype == torch.bool
    assert torch.equal(masks.sum(0), torch.ones(h, w, dtype=torch.long))
    assert masks[0, h // 2, w // 2]  # DC belongs to B1
    assert all(m.any() for m in masks)


def test_band_edges_follow_the_paper_and_scale():
    assert spectral.band_edges(32, 32) == (4.0, 8.0, 12.0)
    assert spectral.band_edges(224, 224) == (28.0, 56.0, 84.0)
    assert spectral.band_edges(32, 64) == (4.0, 8.0, 12.0)  # shorter side
    r = spectral.radius_grid(32, 32)
    for b, (lo, hi) in enumerate([(0, 4), (4, 8), (8, 12), (12, math.inf)], start=1):
        assert torch.equal(spectral.band_mask(32, 32, b), (r >= lo) & (r < hi))
        assert torch.equal(spectral.band_mask(32, 32, f"b{b}"), spectral.band_mask(32, 32, b))


def test_band_masks_are_conjugate_symmetric():
    for h, w in SIZES:
        masks = spectral.band_masks(h, w)
        assert torch.equal(spectral.conjugate_mirror(masks), masks)


@pytest.mark.parametrize("bad", [0, 5, "B5", "low", -1])
def test_unknown_band_fails_with_valid_values(bad):
    with pytest.raises(ValueError, match="valid: B1, B2, B3, B4"):
        spectral.band_mask(32, 32, bad)


@pytest.mark.parametrize("h,w", [(32, 32), (7, 7), (6, 9)])
def test_conjugate_pairs_cover_every_position_once(h, w):
    pairs = spectral.conjugate_pairs(h, w)
    flat = torch.cat([pairs[:, 0] * w + pairs[:, 1], pairs[:, 2] * w + pairs[:, 3]])
    self_pairs = (pairs[:, :2] == pairs[:, 2:]).all(1)
    # each position once: self-conjugate ones appear twice in `flat` (both columns), others once per column
    counts = torch.bincount(flat, minlength=h * w)
    rep = pairs[self_pairs, 0] * w + pairs[self_pairs, 1]
    expected = torch.ones(h * w, dtype=torch.long)
    expected[rep] = 2
    assert torch.equal(counts, expected)
    # partners really are partners, and the count is (HW - S) / 2 + S with S self-conjugate points
    rows, cols = spectral.conjugate_index(h), spectral.conjugate_index(w)
    assert torch.equal(rows[pairs[:, 0]], pairs[:, 2]) and torch.equal(cols[pairs[:, 1]], pairs[:, 3])
    s = int(self_pairs.sum())
    assert s == (2 - h % 2) * (2 - w % 2)
    assert pairs.shape[0] == (h * w - s) // 2 + s


def test_one_conjugate_pair_gives_a_real_sinusoid():
    pairs = spectral.conjugate_pairs(16, 16)
    r, s, r2, s2 = pairs[40].tolist()
    keep = torch.zeros(16, 16)
    keep[r, s] = 1  # only one member: the filter must add the partner
    out = spectral.filter_frequencies(_rand((2, 3, 16, 16), seed=4), keep)
    spec = spectral.fft_centred(out)
    support = spec.abs().amax(dim=(0, 1)) > 1e-9
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[r, s] = expected[r2, s2] = True
    assert torch.equal(support, expected)


@pytest.mark.parametrize("band,offset", [(1, (1, 2)), (2, (3, -4)), (3, (0, 9)), (4, (-10, 7))])
def test_pure_sinusoid_survives_only_its_own_band(band, offset):
    x = _cosine(32, 32, *offset).expand(1, 3, 32, 32)
    for other in (1, 2, 3, 4):
        out = spectral.band_pass(x, [other])
        if other == band:
            torch.testing.assert_close(out, x, atol=1e-10, rtol=0)
        else:
            assert out.abs().max() < 1e-10
    frac = spectral.band_energy_fraction(x)
    torch.testing.assert_close(frac, torch.nn.functional.one_hot(torch.tensor([band - 1]), 4).double())
    assert spectral.band_stop(x, [band]).abs().max() < 1e-10  # zero-mean: nothing but DC is left


def test_all_ones_mask_is_identity_and_zeros_mask_is_zero():
    x = _rand((3, 3, 10, 10), seed=5)
    torch.testing.assert_close(spectral.filter_frequencies(x, torch.ones(10, 10)), x, atol=1e-12, rtol=0)
    torch.testing.assert_close(spectral.filter_frequencies(x, torch.ones(3, 10, 10, dtype=torch.bool)), x,
                               atol=1e-12, rtol=0)
    assert spectral.filter_frequencies(x, torch.zeros(10, 10)).abs().max() == 0


@pytest.mark.parametrize("h,w", [(32, 32), (9, 9), (8, 12)])
def test_filter_is_real_and_matches_numpy(h, w):
    x = _rand((4, 3, h, w), seed=6)
    keep = _rand((h, w), seed=7) < 0.3  # deliberately not conjugate-symmetric
    out = spectral.filter_frequencies(x, keep)
    assert out.dtype == torch.float64 and not out.is_complex()
    k = keep.numpy()
    rows, cols = spectral.conjugate_index(h).numpy(), spectral.conjugate_index(w).numpy()
    sym = k | k[rows][:, cols]
    ref = np.fft.ifft2(np.fft.ifftshift(_numpy_centred(x.numpy()) * sym, axes=(-2, -1)), axes=(-2, -1))
    assert np.abs(ref.imag).max() < 1e-12  # the symmetrised mask keeps the image real
    np.testing.assert_allclose(out.numpy(), ref.real, atol=1e-12)


def test_per_image_masks_match_one_mask_at_a_time():
    x = _rand((3, 2, 16, 16), seed=8)
    keep = _rand((3, 16, 16), seed=9) < 0.5
    out = spectral.filter_frequencies(x, keep)
    for i in range(3):
        torch.testing.assert_close(out[i: i + 1], spectral.filter_frequencies(x[i: i + 1], keep[i]))


def test_dtypes_and_uint8_input():
    x32 = _rand((2, 3, 8, 8), dtype=torch.float32)
    keep = _rand((8, 8), seed=1) < 0.5
    assert spectral.filter_frequencies(x32, keep).dtype == torch.float32
    u8 = (x32 * 255).round().to(torch.uint8)
    out = spectral.filter_frequencies(u8, torch.ones(8, 8))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, u8.float() / 255, atol=1e-6, rtol=0)
    with pytest.raises(TypeError):
        spectral.filter_frequencies(torch.ones(1, 1, 8, 8, dtype=torch.int32), keep)


def test_bad_shapes_fail_with_the_expected_shape():
    x = _rand((2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(8, 8\) or \(2, 8, 8\)"):
        spectral.filter_frequencies(x, torch.ones(3, 8, 8))
    with pytest.raises(ValueError, match=r"\(8, 8\)"):
        spectral.filter_frequencies(x, torch.ones(8, 9))
    with pytest.raises(ValueError, match="N, C, H, W"):
        spectral.filter_frequencies(x[0], torch.ones(8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_filter_on_cuda_matches_cpu():
    x = _rand((2, 3, 16, 16), seed=10)
    keep = _rand((16, 16), seed=11) < 0.5
    out = spectral.filter_frequencies(x.cuda(), keep)
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), spectral.filter_frequencies(x, keep))


def test_symmetrize_mask():
    m = _rand((5, 12, 12), seed=12) < 0.2
    sym = spectral.symmetrize_mask(m)
    assert torch.equal(spectral.conjugate_mirror(sym), sym)
    assert bool((sym | ~m).all())  # contains the original
    assert torch.equal(sym, m | spectral.conjugate_mirror(m))


def test_band_stop_keeps_dc_and_band_pass_of_all_is_identity():
    x = _rand((2, 3, 32, 32), seed=13)
    stopped = spectral.band_stop(x, [1, 2, 3, 4])
    torch.testing.assert_close(stopped, x.mean(dim=(-2, -1), keepdim=True).expand_as(x))
    torch.testing.assert_close(spectral.band_pass(x, [1, 2, 3, 4]), x)
    # band pass and band stop of the same bands add up to the image (DC counted once, in B1)
    torch.testing.assert_close(spectral.band_pass(x, [2, 4]) + spectral.band_stop(x, [2, 4]), x)


def test_band_energy_fraction_matches_a_direct_computation():
    x = _rand((5, 3, 32, 32), seed=14)
    frac = spectral.band_energy_fraction(x)
    assert frac.shape == (5, 4) and frac.dtype == torch.float64
    power = (np.abs(_numpy_centred(x.numpy())) ** 2).sum(axis=1)
    power[:, 16, 16] = 0
    r = np.hypot(*np.meshgrid(np.arange(32) - 16, np.arange(32) - 16, indexing="ij"))
    edges = [0, 4, 8, 12, np.inf]
    ref = np.stack([power[:, (r >= edges[b]) & (r < edges[b + 1])].sum(1) for b in range(4)], 1)
    np.testing.assert_allclose(frac.numpy(), ref / ref.sum(1, keepdims=True), rtol=1e-10)
    with_dc = spectral.band_energy_fraction(x, exclude_dc=False)
    assert (with_dc[:, 0] > frac[:, 0]).all()
    torch.testing.assert_close(with_dc.sum(1), torch.ones(5, dtype=torch.float64))
    assert spectral.band_energy_fraction(torch.full((1, 3, 8, 8), 0.5)).abs().sum() == 0


def test_class_average_spectra_equals_direct_mean():
    x = _rand((10, 3, 8, 8), seed=15)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    avg = spectral.class_average_spectra(x, labels, 3, batch_size=3)
    amp = spectral.amplitude_spectrum(x).mean(1)
    for c in range(3):
        torch.testing.assert_close(avg[c], amp[labels == c].mean(0))
    with pytest.raises(ValueError, match="no images"):
        spectral.class_average_spectra(x, labels, 4)
    with pytest.raises(ValueError, match="num_classes"):
        spectral.class_average_spectra(x, labels, 2)


def test_radial_profile():
    r = spectral.radius_grid(32, 32)
    prof = spectral.radial_profile(torch.stack([torch.ones(32, 32), r]))
    assert prof.shape == (2, int(torch.round(r).max()) + 1)
    torch.testing.assert_close(prof[0], torch.ones_like(prof[0]))
    assert (prof[1] - torch.arange(prof.shape[1])).abs().max() <= 0.5


def test_energy_fraction_of_a_pure_sinusoid_and_complementary_masks():
    img = (cosine(8, 8, 5, 6) + 2.0).expand(1, 3, 8, 8)  # DC + one conjugate pair
    inside = torch.zeros(2, 8, 8, dtype=torch.bool)
    inside[0, 5, 6] = inside[0, 3, 2] = True  # the pair
    inside[1, 6, 4] = True  # elsewhere
    frac = spectral.energy_fraction(img, inside)
    assert torch.allclose(frac, torch.tensor([[1.0, 0.0]], dtype=torch.float64), atol=1e-12)
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    m = torch.rand(8, 8, generator=torch.Generator().manual_seed(1)) < 0.3
    both = spectral.energy_fraction(x, torch.stack([m, ~m]))
    assert torch.allclose(both.sum(1), torch.ones(5, dtype=torch.float64))
    x8 = (x * 255).round().to(torch.uint8)
    assert torch.allclose(spectral.energy_fraction(x8, m[None]), spectral.energy_fraction(x8.double() / 255, m[None]))
