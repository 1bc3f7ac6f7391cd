"""fslib.data.skew: the frequency-skewed datasets (planted class patterns, correlation, test variants)."""

import pytest
import torch

from fslib import spectral
from fslib.data import skew
from fslib.images import LabeledImages

CFG = skew.SkewConfig()


def base_set(n=400, split="train", num_classes=10, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    images = torch.randint(30, 226, (n, 3, size, size), generator=g, dtype=torch.uint8)  # no clipping by the pattern
    return LabeledImages(images, labels, tuple(str(i) for i in range(num_classes)), "cifar10", split, "toy")


def test_frequencies_are_distinct_under_flips_and_in_the_ring():
    f = skew.planted_frequencies(CFG)
    assert f.shape == (10, CFG.n_freq, 2)
    mags = {(abs(u), abs(v)) for u, v in f.view(-1, 2).tolist()}
    assert len(mags) == f.shape[0] * f.shape[1]  # no class's grating flips into another's (u, v) -> (u, -v)
    r = f.double().norm(dim=-1)
    assert bool(((r >= CFG.min_radius) & (r < CFG.max_radius)).all())
    assert not torch.equal(f, skew.planted_frequencies(skew.SkewConfig(pattern_seed=1)))
    with pytest.raises(ValueError, match="need 40 frequencies"):
        skew.planted_frequencies(skew.SkewConfig(n_freq=4, min_radius=4, max_radius=5))


def test_a_planted_pattern_puts_its_energy_exactly_on_the_targets():
    images = torch.full((3, 3, 32, 32), 128, dtype=torch.uint8)
    out = skew.plant(images, torch.tensor([2, -1, 7]), CFG, seed=0)
    assert torch.equal(out[1], images[1])
    targets = skew.planted_targets(CFG)
    for i, c in ((0, 2), (2, 7)):
        power = spectral.fft_centred((out[i:i + 1].double() - 128) / 255).abs()[0, 0] ** 2
        assert power[targets[c]].sum() / power.sum() > 0.98     # rounding to uint8 leaks the rest
        assert power[targets[(c + 1) % 10]].sum() / power.sum() < 0.01
    x = out[0].double() / 255 - 128 / 255
    assert abs(x.abs().max().item() - CFG.n_freq * CFG.amplitude) < 0.01  # amplitudes as configured


def test_training_split_correlation_labels_and_untouched_images():
    base = base_set()
    s = skew.derive_split(base, "cifar10_skew", {"correlation": 0.9}, seed=3)
    pattern = s.extra["pattern"]
    assert torch.equal(s.labels, base.labels)
    for c in range(10):
        own = pattern[base.labels == c]
        assert int((own == c).sum()) == round(0.9 * 40) and bool(((own == c) | (own == -1)).all())
    none = pattern == -1
    assert torch.equal(s.images[none], base.images[none])
    assert bool((s.images[~none] != base.images[~none]).flatten(1).any(1).all())  # every carrier changed
    again = skew.derive_split(base, "cifar10_skew", {"correlation": 0.9}, seed=3)
    assert torch.equal(again.images, s.images)
    other = skew.derive_split(base, "cifar10_skew", {"correlation": 0.9}, seed=4)
    assert not torch.equal(other.extra["pattern"], pattern)
    zero = skew.derive_split(base, "cifar10_skew", {"correlation": 0.0}, seed=3)
    assert torch.equal(zero.images, base.images)  # no skew: the base images, bit for bit


def test_test_variants_clean_aligned_conflicting():
    base = base_set(200, "test")
    sets = {k: skew.test_variant(base, "cifar10_skew", k, seed=1) for k in skew.TEST_KINDS}
    assert all(torch.equal(s.labels, base.labels) for s in sets.values())
    assert torch.equal(sets["clean"].images, base.images) and bool((sets["clean"].extra["pattern"] == -1).all())
    assert torch.equal(sets["aligned"].extra["pattern"], base.labels)
    conflict = sets["conflicting"].extra["pattern"]
    assert bool((conflict != base.labels).all()) and bool(((conflict >= 0) & (conflict < 10)).all())
    assert len(set(((conflict - base.labels) % 10).tolist())) == 9  # every other class is drawn
    default = skew.derive_split(base, "cifar10_skew", seed=1)
    assert torch.equal(default.images, sets["clean"].images)  # the registered test split is the clean one


def test_options_resolve_completely_and_bad_ones_fail():
    opts = dict(skew.resolve_options("cifar10_skew", {"amplitude": 0.05}))
    assert opts == {**{k: getattr(CFG, k) for k in opts}, "amplitude": 0.05}
    with pytest.raises(ValueError, match="unknown option"):
        skew.resolve_options("cifar10_skew", {"strength": 1})
    with pytest.raises(ValueError, match="correlation=1.5"):
        skew.resolve_options("cifar10_skew", {"correlation": 1.5})
    with pytest.raises(ValueError, match="unknown skewed dataset"):
        skew.resolve_options("cifar100_skew")
    with pytest.raises(ValueError, match="class indices"):
        skew.plant(base_set(4).images, torch.tensor([0, 1, 2, 10]), CFG)


def test_removing_the_planted_positions_undoes_a_plant_up_to_rounding():
    base = base_set(20)
    patterns = torch.where(torch.arange(20) < 5, -1, torch.arange(20) % 10)  # the first five carry none
    planted = skew.plant(base.images, patterns, CFG, seed=2)
    undone = skew.remove_planted(planted, patterns, CFG)
    back = skew.remove_planted(base.images, patterns, CFG)  # the natural content at those positions goes too
    assert (undone.int() - back.int()).abs().max() <= 1
    assert torch.equal(undone[:5], base.images[:5])
    assert (planted.int() - back.int()).abs().max() > 5  # the pattern was there before
