"""Tests for fslib.metrics: ADCS, its official variant, summaries and bootstrap stability."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fslib import metrics, spectral, stability


def _images_with_spectra(amps: torch.Tensor) -> torch.Tensor:
    """Real float64 images whose centred amplitude spectrum is ``amps`` (zero phase).

    ``amps`` : (..., H, W), made conjugate-symmetric first, so the inverse FFT is real and
    ``|fft_centred(image)| == amps`` up to rounding.
    """
    sym = 0.5 * (amps + spectral.conjugate_mirror(amps))
    return spectral.ifft_centred(sym.to(torch.complex128))


def _ranked_classes(num_classes=4, channels=3, h=8, w=8, per_class=3, seed=0):
    """Classes whose channel-mean spectra have a known strict order at every position.

    Returns images (N, channels, H, W) float64, labels, and the rank (0 = smallest) of each
    class at each position, (C, H, W).
    """
    g = torch.Generator().manual_seed(seed)
    rank = torch.argsort(torch.rand(num_classes, h, w, generator=g), dim=0)  # a permutation per position
    rep = torch.arange(h * w).reshape(h, w) <= spectral.conjugate_mirror(torch.arange(h * w).reshape(h, w))
    rank = torch.where(rep, rank, spectral.conjugate_mirror(rank))  # partners share the representative's
    # Level of class c at a position: 1 + rank (gaps of 1 >> rounding); channels and images
    # vary around that level but keep their mean, so only the channel mean is ordered.
    level = 1.0 + rank.to(torch.float64)  # (C, H, W)
    jitter = 0.2 * (torch.rand(num_classes, per_class, channels, h, w, generator=g, dtype=torch.float64) - 0.5)
    jitter = jitter - jitter.mean(dim=(1, 2), keepdim=True)
    jitter = 0.5 * (jitter + spectral.conjugate_mirror(jitter))
    amps = level[:, None, None] + jitter  # (C, n, channels, H, W), all positive
    images = _images_with_spectra(amps).reshape(num_classes * per_class, channels, h, w)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return images, labels, rank


def test_class_mean_spectra_recovers_built_spectra():
    images, labels, rank = _ranked_classes()
    e = metrics.class_mean_spectra(images, labels, 4)
    assert e.shape == (4, 8, 8) and e.dtype == torch.float64
    # The channel-and-image mean of each class is exactly its level 1 + rank.
    torch.testing.assert_close(e, 1.0 + rank.to(torch.float64), atol=1e-9, rtol=0)


def test_adcs_paper_known_values_from_ranks():
    images, labels, rank = _ranked_classes()
    a = metrics.adcs(images, labels, 4)
    # A class ranked r among C beats r classes and loses to C-1-r: ADCS = 2r - (C-1).
    assert torch.equal(a, 2 * rank - 3)
    assert a.dtype == torch.int64


def test_adcs_from_spectra_ties_count_zero():
    e = torch.tensor([[[1.0, 5.0]], [[1.0, 2.0]], [[0.5, 2.0]]])  # (3, 1, 2)
    a = metrics.adcs_from_spectra(e)
    assert a[:, 0, 0].tolist() == [1, 1, -2]  # classes 0 and 1 tie: sign 0
    assert a[:, 0, 1].tolist() == [2, -1, -1]


@pytest.mark.parametrize("variant", metrics.VARIANTS)
def test_range_and_parity(variant):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (60, 3, 16, 16), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 5, (60,), generator=g)
    labels[:5] = torch.arange(5)
    a = metrics.adcs(images, labels, 5, variant)
    lo, hi = metrics.adcs_range(5, variant)
    assert a.shape == (5, 16, 16)
    assert int(a.min()) >= lo and int(a.max()) <= hi
    assert int(a.min()) == lo and int(a.max()) == hi  # 256 positions: both extremes occur
    if variant == "official":  # a sum of C terms of +-1 has the parity of C
        assert bool((a % 2 == 5 % 2).all())


@pytest.mark.parametrize("variant", metrics.VARIANTS)
def test_invariant_to_image_order(variant):
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.arange(40) % 4
    perm = torch.randperm(40, generator=g)
    a = metrics.adcs(images, labels, 4, variant, batch_size=7)
    b = metrics.adcs(images[perm], labels[perm], 4, variant, batch_size=13)
    assert torch.equal(a, b)


def _official_transcription(images: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Line-by-line transcription of the official compute_ADCS.py (numpy, loops)."""
    energy = {}
    for x, y in zip(images, labels):
        y1 = np.zeros((x.shape[1], x.shape[2], 3), dtype=np.complex128)
        for j in range(3):
            y1[:, :, j] = np.fft.fftshift(np.fft.fft2(x[j]))
        y1[y1 == 0] = 12e-12
        amp = np.abs(y1)
        energy[int(y)] = energy[int(y)] + amp if int(y) in energy else amp
    out = np.zeros((num_classes, images.shape[2], images.shape[3]))
    for j in range(num_classes):
        olp = np.zeros(images.shape[2:])
        for i in range(num_classes):
            diff = energy[j] - energy[i]
            diff = 0.2989 * diff[:, :, 0] + 0.5870 * diff[:, :, 1] + 0.1140 * diff[:, :, 2]
            diff[diff > 0] = 1
            diff[diff <= 0] = -1
            olp += diff
        out[j] = olp
    return out


def test_official_variant_equals_transcription_of_the_script():
    g = torch.Generator().manual_seed(3)
    images = torch.rand(30, 3, 8, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (30,), generator=g)
    labels[:3] = torch.arange(3)
    ours = metrics.adcs(images, labels, 3, "official", batch_size=4)
    ref = _official_transcription(images.numpy(), labels.numpy(), 3)
    np.testing.assert_array_equal(ours.numpy(), ref)


def test_official_uses_sums_not_means():
    # Class 0: one bright image; class 1: four images a third as bright. Means favour
    # class 0 everywhere; sums favour class 1 (4/3 of class 0) everywhere.
    x0 = torch.full((1, 3, 4, 4), 0.9, dtype=torch.float64)
    x0[..., 0, 0] = 0.0  # some non-DC content
    images = torch.cat([x0, x0.expand(4, -1, -1, -1) / 3])
    labels = torch.tensor([0, 1, 1, 1, 1])
    paper = metrics.adcs(images, labels, 2)
    official = metrics.adcs(images, labels, 2, "official")
    nonzero = spectral.amplitude_spectrum(x0)[0, 0] > 1e-9
    assert bool((paper[0][nonzero] == 1).all())
    assert bool((official[0][nonzero] == -2).all()) and bool((official[1][nonzero] == 0).all())


def test_official_is_paper_minus_one_on_grey_images():
    # With identical channels the grey weights and the channel mean order classes alike.
    g = torch.Generator().manual_seed(4)
    grey = torch.rand(24, 1, 8, 8, generator=g, dtype=torch.float64)
    images = grey.expand(-1, 3, -1, -1)
    labels = torch.arange(24) % 4
    assert torch.equal(metrics.adcs(images, labels, 4, "official"), metrics.adcs(images, labels, 4) - 1)


def test_normalize_changes_only_the_scale_off_dc():
    g = torch.Generator().manual_seed(5)
    images = torch.rand(20, 3, 8, 8, generator=g)
    labels = torch.arange(20) % 2
    stats = ((0.5, 0.4, 0.3), (2.0, 2.0, 2.0))  # a common std: off-DC order unchanged
    a = metrics.adcs(images, labels, 2, "official")
    b = metrics.adcs(images, labels, 2, "official", normalize=stats)
    off_dc = torch.ones(8, 8, dtype=torch.bool)
    off_dc[4, 4] = False
    assert torch.equal(a[:, off_dc], b[:, off_dc])
    with pytest.raises(ValueError, match="3 means"):
        metrics.adcs(images, labels, 2, normalize=((0.5,), (1.0,)))


def test_bad_inputs_name_the_value():
    images = torch.zeros(4, 3, 8, 8)
    with pytest.raises(ValueError, match="'fancy'.*paper, official"):
        metrics.adcs(images, torch.zeros(4, dtype=torch.long), 2, "fancy")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.adcs(images, torch.tensor([0, 1, 2, 0]), 2)
    with pytest.raises(ValueError, match="no images"):
        metrics.adcs(images, torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="unknown device"):
        metrics.adcs(images, torch.tensor([0, 1, 0, 1]), 2, device="abacus")
    with pytest.raises(ValueError, match="RGB"):
        metrics.adcs(torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]), 2, "official")


def test_radial_profile_and_band_means_locate_a_band():
    # Class 0 wins exactly in band B3 of a 32x32 map, loses elsewhere.
    b3 = spectral.band_mask(32, 32, 3)
    e = torch.ones(3, 32, 32)
    e[0][b3] = 2.0
    e[0][~b3] = 0.5
    a = metrics.adcs_from_spectra(e)
    prof = metrics.adcs_radial_profile(a)
    assert prof.shape == (3, 24)  # rounded radius 0..23 at 32x32 (corner: 16 * sqrt(2))
    assert torch.all(prof[0, 9:12] == 2) and torch.all(prof[0, :4] == -2)  # bins inside B3, B1
    assert -2 < float(prof[0, 8]) < 2  # rounded radius 8 straddles the B2/B3 edge
    bands = metrics.adcs_band_means(a, ["x", "y", "z"])
    assert bands.loc["x", "B3"] == 2 and bands.loc["x", "B1"] == -2
    assert list(bands.columns) == ["B1", "B2", "B3", "B4"]


def test_distinctiveness_ranks_the_planted_class_first():
    b3 = spectral.band_mask(32, 32, 3)
    e = torch.rand(4, 32, 32, generator=torch.Generator().manual_seed(6))
    e[2][b3] = 5.0  # class 2 beats everyone in B3
    table = metrics.adcs_distinctiveness(metrics.adcs_from_spectra(e), ["a", "b", "c", "d"])
    assert table.loc[0, "class"] == "c" and table.loc[0, "top_band"] == "B3"
    assert table["rank"].tolist() == [1, 2, 3, 4]
    assert table.loc[0, "top_fraction"] >= int(b3.sum()) / 1024
    assert table.loc[0, "top_band_share"] == int(b3.sum()) / (table.loc[0, "top_fraction"] * 1024)
    assert ((table["top_band_share"] > 0) == (table["top_fraction"] > 0)).all()
    # The official map (paper minus 1 without ties) gives the same table.
    official = metrics.adcs_distinctiveness(metrics.adcs_from_spectra(e) - 1, ["a", "b", "c", "d"], "official")
    assert official.equals(table)


def test_positive_mask_levels():
    a = torch.tensor([[[3, 1, -1]], [[-3, 1, 3]], [[1, -1, -1]], [[-1, -1, -1]]])
    assert metrics.adcs_positive_mask(a)[:, 0].tolist() == [
        [True, False, False], [False, False, True], [False, False, False], [False, False, False],
    ]
    assert metrics.adcs_positive_mask(a, level=1)[0, 0].tolist() == [True, True, False]
    with pytest.raises(ValueError, match="level 4 outside"):
        metrics.adcs_positive_mask(a, level=4)


@pytest.mark.parametrize("variant", metrics.VARIANTS)
def test_stability_reference_equals_adcs(variant):
    g = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (48, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.arange(48) % 3
    st = stability.adcs_stability(images, labels, 3, variant, n_boot=5, seed=0, batch_size=10)
    assert torch.equal(st.reference, metrics.adcs(images, labels, 3, variant))
    assert st.agreement.shape == (3, 8, 8)
    assert bool(((st.agreement >= 0) & (st.agreement <= 1)).all())
    assert st.table["n_images"].tolist() == [16, 16, 16]


def test_stability_is_one_without_within_class_variation_and_below_one_with_noise():
    images, labels, _ = _ranked_classes(per_class=1)
    same = images.repeat_interleave(6, dim=0)  # six identical copies per class
    st = stability.adcs_stability(same, labels.repeat_interleave(6), 4, n_boot=8, seed=0)
    assert st.table["agree_all"].tolist() == [1.0] * 4
    g = torch.Generator().manual_seed(8)
    noisy = torch.rand(80, 3, 8, 8, generator=g)  # classes drawn from one distribution
    st = stability.adcs_stability(noisy, torch.arange(80) % 4, 4, n_boot=20, seed=0)
    assert float(st.table["agree_all"].max()) < 1.0


def test_stability_seeded_and_subset():
    g = torch.Generator().manual_seed(9)
    images = torch.rand(60, 3, 8, 8, generator=g)
    labels = torch.arange(60) % 3
    a = stability.adcs_stability(images, labels, 3, n_boot=6, seed=1, n_stability=10)
    b = stability.adcs_stability(images, labels, 3, n_boot=6, seed=1, n_stability=10)
    assert torch.equal(a.agreement, b.agreement) and a.table.equals(b.table)
    assert a.table["n_images"].tolist() == [10, 10, 10]
    with pytest.raises(ValueError, match="n_boot must be >= 1, got 0"):
        stability.adcs_stability(images, labels, 3, n_boot=0)


def test_inside_reads_the_map_within_each_mask():
    a = torch.tensor([[[3, 1], [-1, 3]], [[-3, 1], [1, -3]], [[1, -1], [-1, 1]], [[-1, -1], [1, -1]]])
    masks = torch.zeros(4, 2, 2, dtype=torch.bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # class 0: both its +3 positions
    masks[1, 0, :] = True  # class 1: values -3 and 1
    table = metrics.adcs_inside(a, masks, ["a", "b", "c", "d"])
    assert table["n_positions"].tolist() == [2, 2, 0, 0]
    assert table.loc["a", "mean_adcs"] == 3 and table.loc["a", "top_fraction"] == 1
    assert table.loc["b", "mean_adcs"] == -1 and table.loc["b", "top_fraction"] == 0
    assert np.isnan(table.loc["c", "mean_adcs"])
    shared = metrics.adcs_inside(a, torch.ones(2, 2, dtype=torch.bool))
    assert shared["mean_adcs"].tolist() == [1.5, -1.0, 0.0, -0.5]


def test_global_order_is_exact_for_scaled_copies_of_one_spectrum():
    g = torch.Generator().manual_seed(10)
    base = torch.rand(16, 16, generator=g, dtype=torch.float64) + 0.1
    scale = torch.tensor([3.0, 1.0, 2.0, 5.0, 4.0], dtype=torch.float64)
    a = metrics.adcs_from_spectra(scale[:, None, None] * base)
    table = metrics.adcs_global_order(a)
    assert table["global_value"].tolist() == [0, -4, -2, 4, 2]
    assert table["match"].tolist() == [1.0] * 5
    official = metrics.adcs_global_order(a - 1)  # the official scale: same comparisons
    assert official["global_value"].tolist() == [-1, -5, -3, 3, 1] and official["match"].tolist() == [1.0] * 5
    # Independent random spectra are not one ordering: most positions disagree.
    mixed = metrics.adcs_global_order(metrics.adcs_from_spectra(torch.rand(5, 16, 16, generator=g)))
    assert float(mixed["match"].mean()) < 0.5
