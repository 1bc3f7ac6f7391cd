"""Properties P1-P5 of the synthetic datasets, their variants, cache and API."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from fslib import spectral, synthetic
from fslib.spectral import conjugate_mirror

N = 256  # images per split in the property tests (one generator chunk of the book's config)
SMALL = synthetic.SyntheticConfig(chunk=64)  # same generator, smaller chunks: cheap API tests


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("FSLIB_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def splits():
    """{name: {"train": (images, labels), "test": (images, labels)}} at N images each."""
    return {name: {s: synthetic.load(name, s, N) for s in synthetic.SPLITS} for name in synthetic.DATASETS}


def _both(splits, name):
    (xa, ya), (xb, yb) = splits[name]["train"], splits[name]["test"]
    return torch.cat([xa, xb]), torch.cat([ya, yb])


def test_shapes_dtypes_and_balance(splits):
    for name in synthetic.DATASETS:
        for split in synthetic.SPLITS:
            images, labels = splits[name][split]
            assert images.shape == (N, 3, 32, 32) and images.dtype == torch.uint8
            assert labels.shape == (N,) and labels.dtype == torch.int64
            assert torch.equal(torch.bincount(labels, minlength=4), torch.full((4,), N // 4))


@pytest.mark.parametrize("name", synthetic.DATASETS)
def test_p1_c3_lives_in_band_k(splits, name):
    images, labels = _both(splits, name)
    k = synthetic.dataset_band(name)
    frac = spectral.band_energy_fraction(images[labels == 3])[:, k - 1]
    assert frac.min() >= 0.95


@pytest.mark.parametrize("name", synthetic.DATASETS)
def test_p2_c1_has_no_energy_in_band_k(splits, name):
    images, labels = _both(splits, name)
    k = synthetic.dataset_band(name)
    frac = spectral.band_energy_fraction(images[labels == 1])[:, k - 1]
    assert frac.max() <= 0.05
    # ... while every other class does hold energy there (the band is not empty for all)
    for c in (0, 2):
        assert spectral.band_energy_fraction(images[labels == c])[:, k - 1].mean() > 0.1


@pytest.mark.parametrize("name", synthetic.DATASETS)
def test_p3_special_frequencies_stand_out_in_every_c2_image(splits, name):
    images, labels = _both(splits, name)
    c2 = images[labels == 2].double().numpy() / 255
    amp = np.abs(np.fft.fftshift(np.fft.fft2(c2), axes=(-2, -1))).mean(axis=1)  # numpy, independent of fslib
    median = np.median(amp.reshape(len(amp), -1), axis=1)
    pos = np.array(synthetic.special_frequencies(name)[2])
    ratio = amp[:, pos[:, 0], pos[:, 1]] / median[:, None]
    assert ratio.min() >= 3.0
    lib = synthetic.special_amplitude_ratio(images[labels == 2], [tuple(p) for p in pos])
    np.testing.assert_allclose(lib.numpy(), ratio, rtol=1e-9)
    # the same frequencies do not stand out in the other classes (they are specific to C2)
    others = synthetic.special_amplitude_ratio(images[labels != 2], [tuple(p) for p in pos])
    assert others.median() < 3.0


def test_special_frequencies_are_the_strongest_peaks_of_c2(splits):
    images, labels = splits["syn_b2"]["test"]
    avg = spectral.class_average_spectra(images, labels, 4)
    avg[:, 16, 16] = 0
    special = synthetic.special_frequencies("syn_b2")[2]
    top = torch.topk(avg[2].flatten(), len(special)).indices
    assert sorted((int(i) // 32, int(i) % 32) for i in top) == special


def test_p4_same_seed_identical_other_seed_different():
    a = synthetic.generate("syn_b3", "train", 64, seed=5, config=SMALL)
    b = synthetic.generate("syn_b3", "train", 64, seed=5, config=SMALL)
    c = synthetic.generate("syn_b3", "train", 64, seed=6, config=SMALL)
    assert a.images.numpy().tobytes() == b.images.numpy().tobytes()
    assert torch.equal(a.labels, b.labels)
    assert (a.images != c.images).flatten(1).any(1).all()  # every image differs


def test_p4_bytes_do_not_depend_on_the_callers_thread_count():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = synthetic.generate("syn_b2", "test", 64, config=SMALL).images
        torch.set_num_threads(2)
        b = synthetic.generate("syn_b2", "test", 64, config=SMALL).images
        assert torch.get_num_threads() == 2  # the caller's setting is restored
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a, b)


def test_p4_train_and_test_are_disjoint(splits):
    for name in synthetic.DATASETS:
        train = {bytes(x) for x in splits[name]["train"][0].flatten(1).numpy()}
        test = {bytes(x) for x in splits[name]["test"][0].flatten(1).numpy()}
        assert len(train) == N and len(test) == N and not train & test


def test_p4_datasets_differ_and_prefix_property():
    a = synthetic.generate("syn_b1", "test", 150, config=SMALL).images
    assert torch.equal(synthetic.generate("syn_b1", "test", 37, config=SMALL).images, a[:37])  # within a chunk
    assert torch.equal(synthetic.generate("syn_b1", "test", 70, config=SMALL).images, a[:70])  # across chunks
    assert not torch.equal(synthetic.generate("syn_b2", "test", 37, config=SMALL).images, a[:37])
    assert not torch.equal(synthetic.generate("syn_b1", "test", 37).images, a[:37])  # chunking is part of the design


@pytest.mark.parametrize("n", [1, 7, 38])
def test_p4_classes_balanced_for_any_n(n):
    counts = torch.bincount(synthetic.generate("syn_b4", "train", n, config=SMALL).labels, minlength=4)
    assert counts.sum() == n and counts.max() - counts.min() <= 1


@pytest.mark.parametrize("name", synthetic.DATASETS)
def test_p5_colour_statistics_do_not_separate_classes(splits, name):
    acc = synthetic.colour_probe_accuracy(splits[name]["train"], splits[name]["test"])
    assert acc < 0.40


def test_colour_probe_detects_a_colour_difference(splits):
    # The probe of P5 must be able to fail: shift the red channel of C1 by 8 grey levels.
    def shifted(images, labels):
        out = images.clone().to(torch.int16)
        out[labels == 1, 0] += 8
        return out.clamp(0, 255).to(torch.uint8), labels

    acc = synthetic.colour_probe_accuracy(shifted(*splits["syn_b1"]["train"]), shifted(*splits["syn_b1"]["test"]))
    assert acc > 0.40


def test_patterns_are_zero_mean_and_grey_times_colour():
    g = synthetic.generate("syn_b2", "test", 128, config=SMALL)
    x = g.images.double() / 255
    # per-channel means stay at the 0.5 grey level (zero-mean pattern, rare clipping)
    assert (x.mean(dim=(2, 3)) - 0.5).abs().max() < 0.01
    # channels are one grey pattern scaled by a colour: strongly correlated, same sign
    centred = x - x.mean(dim=(2, 3), keepdim=True)
    strongest = centred.std(dim=(2, 3)).argmax(1)
    ref = centred[torch.arange(128), strongest].flatten(1)
    for c in range(3):
        other = centred[:, c].flatten(1)
        corr = (ref * other).sum(1) / (ref.norm(dim=1) * other.norm(dim=1))
        strong = other.std(1) > 0.03  # noise dominates nearly-black channels
        assert corr[strong].min() > 0.9
    assert 0 <= g.clip_fraction < 1e-3


@pytest.mark.parametrize("name", synthetic.DATASETS)
def test_energy_stays_in_class_support(splits, name):
    images, labels = splits[name]["test"]
    support = synthetic.class_support(name)
    power = spectral.fft_centred(images.double() / 255).abs().pow(2).sum(1)
    power[:, 16, 16] = 0
    for c in range(4):
        p = power[labels == c]
        outside = (p * ~support[c]).sum(dim=(1, 2)) / p.sum(dim=(1, 2))
        assert outside.max() < 0.02
    # C0's lines put most of its energy on the diagonal
    diag = torch.zeros(32, 32, dtype=torch.bool)
    for r, s in synthetic.special_frequencies(name)[0]:
        diag[r, s] = True
    p0 = power[labels == 0]
    assert ((p0 * diag).sum(dim=(1, 2)) / p0.sum(dim=(1, 2))).min() > 0.6


def test_special_frequencies_design():
    spec = synthetic.special_frequencies("syn_b1")
    assert spec[0] == [(r, r) for r in range(32) if r != 16]
    c2 = spec[2]
    assert len(c2) == 8 and len(set(c2)) == 8
    rows, cols = spectral.conjugate_index(32), spectral.conjugate_index(32)
    assert {(int(rows[r]), int(cols[s])) for r, s in c2} == set(c2)  # closed under conjugation
    assert all(r != s for r, s in c2)  # off C0's diagonal
    bands = spectral.band_masks(32, 32)
    assert sorted(int(bands[:, r, s].int().argmax()) + 1 for r, s in c2) == [1, 1, 2, 2, 3, 3, 4, 4]


def test_band_energy_table(splits):
    data = {name: splits[name]["test"] for name in synthetic.DATASETS}
    table = synthetic.band_energy_table(data)
    assert table.shape == (16, 4) and list(table.columns) == ["B1", "B2", "B3", "B4"]
    np.testing.assert_allclose(table.sum(axis=1).to_numpy(), 1.0, rtol=1e-9)
    for name in synthetic.DATASETS:
        k = synthetic.dataset_band(name)
        assert table.loc[(name, "C3"), f"B{k}"] > 0.95 and table.loc[(name, "C1"), f"B{k}"] < 0.05


@pytest.mark.parametrize("kind,bands", synthetic.VARIANTS)
def test_variants(splits, kind, bands):
    images, labels = synthetic.variant("syn_b1", kind, bands, "test", N)
    orig, orig_labels = splits["syn_b1"]["test"]
    assert images.shape == orig.shape and images.dtype == torch.uint8 and torch.equal(labels, orig_labels)
    # DC kept: mean grey level survives (up to rounding and undone clipping)
    mean_diff = (images.double().mean(dim=(2, 3)) - orig.double().mean(dim=(2, 3))).abs()
    assert mean_diff.max() < 1.0
    # C1 of Syn_B1 spans B2..B4 with equal energy: removed bands lose their energy
    c1 = images[labels == 1]
    frac = spectral.band_energy_fraction(c1)
    removed = [b for b in (1, 2, 3, 4) if (b in bands) == (kind == "bandstop")]
    kept = [b for b in (2, 3, 4) if b not in removed]
    if kept:  # otherwise only rounding noise is left
        assert frac[:, [b - 1 for b in removed]].sum(1).max() < 0.05


def test_bandstop_of_band_k_erases_c3(splits):
    for name in synthetic.DATASETS:
        k = synthetic.dataset_band(name)
        images, labels = synthetic.variant(name, "bandstop", (k,), "test", N)
        # a flat grey image up to the pixel noise (std 0.005 * 255 = 1.3 grey levels) and rounding
        assert images[labels == 3].double().std(dim=(2, 3)).max() < 2.0
        assert images[labels == 2].double().std(dim=(2, 3)).amax(1).min() > 5.0  # C2 keeps its other bands


def test_cache_is_written_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path))
    a = synthetic.load("syn_b4", "test", 16, seed=3, config=SMALL)
    files = list((tmp_path / "synthetic").glob("*.npz"))
    assert len(files) == 1 and "syn_b4_test_n16_s3" in files[0].name
    with np.load(files[0], allow_pickle=False) as z:
        assert np.array_equal(z["images"], a[0].numpy())
    b = synthetic.load("syn_b4", "test", 16, seed=3, config=SMALL)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    synthetic.load("syn_b4", "test", 16, seed=4, config=SMALL)
    synthetic.load("syn_b4", "test", 16, seed=3, config=synthetic.SyntheticConfig(chunk=64, noise_std=0.0))
    assert len(list((tmp_path / "synthetic").glob("*.npz"))) == 3
    data = bytearray(files[0].read_bytes())
    data[-200] ^= 0x04  # a flipped bit in the cached images: detected, set aside, generated again
    files[0].write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=re.escape(files[0].name) + r" is unusable .*generated again"):
        c = synthetic.load("syn_b4", "test", 16, seed=3, config=SMALL)
    assert torch.equal(a[0], c[0]) and files[0].with_name(files[0].name + ".damaged").exists()


def test_load_labeled():
    data = synthetic.load_labeled("syn_b2", "test", 8, config=SMALL)
    assert data.classes == ("C0", "C1", "C2", "C3") and data.name == "syn_b2" and data.split == "test"
    assert data.source == f"fslib.synthetic v{synthetic.GENERATOR_VERSION}" and len(data) == 8
    assert data.extra["band"] == 2 and data.extra["special_frequencies"] == synthetic.special_frequencies("syn_b2")


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: synthetic.load("syn_b5"), "valid: syn_b1, syn_b2, syn_b3, syn_b4"),
        (lambda: synthetic.load("cifar10"), "valid: syn_b1"),
        (lambda: synthetic.load("syn_b1", "val"), "valid: train, test"),
        (lambda: synthetic.load("syn_b1", "train", 0), "positive integer"),
        (lambda: synthetic.load("syn_b1", "train", 2.5), "positive integer"),
        (lambda: synthetic.variant("syn_b1", "lowpass", (1,)), "valid: bandpass, bandstop"),
        (lambda: synthetic.variant("syn_b1", "bandstop", (1, 1)), "valid: one band or a pair"),
        (lambda: synthetic.variant("syn_b1", "bandstop", (5,)), "valid: one band or a pair"),
        (lambda: synthetic.variant("syn_b1", "bandstop", (1, 2, 3)), "valid: one band or a pair"),
        (lambda: synthetic.special_frequencies("syn_b0"), "valid: syn_b1"),
        (lambda: synthetic.SyntheticConfig(chunk=6), "multiple of 4"),
        (lambda: synthetic.SyntheticConfig(c2_special=((2, 2),)), "diagonal"),
    ],
)
def test_bad_arguments_fail_with_the_valid_values(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_figure_data_and_plots():
    import matplotlib

    matplotlib.use("Agg")
    from fslib.plot.synthetic import synthetic_examples, synthetic_spectra, synthetic_variants

    ex = synthetic.examples(("syn_b1", "syn_b4"), n_examples=2, config=SMALL)
    assert ex.shape == (2, 4, 2, 3, 32, 32)
    images, labels = synthetic.load("syn_b1", "test", 8, config=SMALL)
    assert torch.equal(ex[0, 2, 0], images[int((labels == 2).nonzero()[0])])
    spectra = synthetic.class_spectra({n: synthetic.load(n, "test", 16, config=SMALL) for n in ("syn_b1", "syn_b2")})
    assert spectra.shape == (2, 4, 32, 32)
    rows = synthetic.variant_examples("syn_b3", config=SMALL)
    assert rows.shape == (7, 4, 3, 32, 32)
    for fig, _ in (synthetic_examples(ex), synthetic_spectra(spectra), synthetic_variants(rows)):
        assert len(fig.axes) >= 1
        matplotlib.pyplot.close(fig)


def test_config_table_lists_every_choice():
    table = synthetic.config_table()
    assert "c2_special" in table.index and table.loc["n_train", "value"] == "10000"
    fraction = float(table.loc["c2_special_fraction", "value"])
    assert math.isclose(fraction, synthetic.SyntheticConfig().c2_special_fraction)


def test_planted_targets_follow_the_synthetic_design():
    from fslib import synthetic
    from fslib.spectral import band_mask

    t = synthetic.planted_targets("syn_b2")
    assert t.shape == (4, 32, 32)
    diag = torch.eye(32, dtype=torch.bool)
    diag[16, 16] = False
    assert torch.equal(t[0], diag)
    assert int(t[2].sum()) == 8 and torch.equal(t[2], conjugate_mirror(t[2]))
    band = band_mask(32, 32, 2)
    assert torch.equal(t[3], band) and not (t[1] & t[3]).any()
    assert torch.equal(t[1] | t[3] | torch.nn.functional.one_hot(torch.tensor(16 * 32 + 16), 1024).bool().reshape(32, 32),
                       torch.ones(32, 32, dtype=torch.bool))
    assert sorted(zip(*t[2].nonzero().T.tolist())) == synthetic.special_frequencies("syn_b2")[2]


# --------------------------------------------------------------------------- generator options
@pytest.mark.parametrize("options, match", [
    ({"noise": 0.02}, r"unknown option\(s\) \['noise'\] of 'syn_b4'; valid: c2_special_fraction, c0_line_fraction, noise_std"),
    ({"size": 64}, r"unknown option\(s\) \['size'\]"),  # not a free parameter: the registry's resolution
    ({"c2_special_fraction": 1.0}, r"c2_special_fraction=1.0 is out of range; valid: a number in \(0, 1\)"),
    ({"c2_special_fraction": 0}, r"valid: a number in \(0, 1\)"),
    ({"c0_line_fraction": 1.5}, r"c0_line_fraction=1.5 .*valid: a number in \(0, 1\]"),
    ({"noise_std": -0.01}, r"noise_std=-0.01 .*valid: a number in \[0, 0.25\]"),
    ({"noise_std": True}, r"noise_std=True .*valid"),
    ({"noise_std": "0.02"}, r"noise_std='0.02' .*valid"),
    ({"contrast": (0.2, 0.1)}, r"contrast=\(0.2, 0.1\) .*0 < low <= high <= 0.5"),
    ({"contrast": (0.1,)}, r"contrast=\(0.1,\) .*a pair"),
    ({"c0_lines": (2.5, 4)}, r"c0_lines=\(2.5, 4\) .*integers"),
    ({"c0_lines": (0, 4)}, r"1 <= low <= high <= 32"),
    ({"c0_line_weight": (0.5, 1.5)}, r"0 < low <= high <= 1"),
])
def test_bad_generator_options_name_the_value_and_what_is_valid(options, match):
    with pytest.raises(ValueError, match=match):
        synthetic.resolve_options("syn_b4", options)


def test_options_keep_only_what_differs_from_the_defaults_in_one_normal_form():
    assert synthetic.resolve_options("syn_b1") == () == synthetic.resolve_options("syn_b1", {"noise_std": 0.005})
    given = {"contrast": [0.2, 0.3], "c2_special_fraction": 0.7, "c0_lines": [3, 6], "noise_std": 0}
    assert synthetic.resolve_options("syn_b2", given) == (("c2_special_fraction", 0.7), ("contrast", (0.2, 0.3)),
                                                          ("noise_std", 0.0))
    assert synthetic.resolve_options("syn_b2", list(given.items())) == synthetic.resolve_options("syn_b2", given)
    cfg = synthetic.config_of(synthetic.resolve_options("syn_b2", given))
    assert (cfg.contrast, cfg.c2_special_fraction, cfg.noise_std) == ((0.2, 0.3), 0.7, 0.0)
    assert synthetic.options_of(cfg) == synthetic.resolve_options("syn_b2", given)
    assert synthetic.config_of(()) == synthetic.SyntheticConfig() and synthetic.options_of(None) == ()
    with pytest.raises(ValueError, match="unknown synthetic dataset 'syn_b5'"):
        synthetic.resolve_options("syn_b5", {})
    with pytest.raises(ValueError, match="given twice"):
        synthetic.resolve_options("syn_b1", [("noise_std", 0.01), ("noise_std", 0.02)])


@pytest.mark.parametrize("option, value", [("noise_std", 0.02), ("c2_special_fraction", 0.7), ("c0_line_fraction", 0.5)])
def test_a_changed_option_changes_the_images_and_has_its_own_cache_file(option, value):
    from fslib.synthetic import generator

    default = synthetic.SyntheticConfig()
    changed = synthetic.config_of({option: value})
    a, b = synthetic.load("syn_b4", "test", 16), synthetic.load("syn_b4", "test", 16, config=changed)
    assert torch.equal(a[1], synthetic.load("syn_b4", "test", 16, config=default)[1])
    assert not torch.equal(a[0], b[0])
    assert torch.equal(b[0], synthetic.generate("syn_b4", "test", 16, config=changed).images)  # the cache holds it
    paths = {generator._cache_path("syn_b4", "test", 16, 0, c) for c in (default, changed)}
    assert len(paths) == 2 and all(p.exists() for p in paths)


def test_the_changed_option_is_the_property_it_names():
    # the share of C2's (non-DC) energy at its special frequencies follows c2_special_fraction
    pos = np.array(synthetic.special_frequencies("syn_b3")[2])
    shares = []
    for share in (0.2, 0.7):
        images, labels = synthetic.load("syn_b3", "test", 64, config=synthetic.config_of({"c2_special_fraction": share}))
        power = spectral.fft_centred(images[labels == 2].double().mean(1) / 255).abs().pow(2).mean(0)
        power[16, 16] = 0  # DC: the grey level
        shares.append(float(power[pos[:, 0], pos[:, 1]].sum() / power.sum()))
    assert shares[0] < 0.3 < 0.6 < shares[1]
