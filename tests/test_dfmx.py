"""fslib.augment.dfmx: DFM-X filters an image to another class's DFM, at rate p, labels unchanged."""

import pytest
import torch
from toy_data import toy_loader

from fslib import augment as aug
from fslib import runs, train
from fslib.augment import dfmx
from fslib.spectral import conjugate_mirror, fft_centred, symmetrize_mask

K, H = 4, 8


def random_dfms(seed=0, k=K, h=H, frac=0.15):
    """Conjugate-symmetric random masks, one per class (as fslib's DFMs are)."""
    g = torch.Generator().manual_seed(seed)
    return symmetrize_mask(torch.rand(k, h, h, generator=g) < frac)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path))
    return tmp_path


def test_an_augmented_image_keeps_only_the_chosen_class_dfm_and_dc():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, H, H)
    labels = torch.arange(32) % K
    dfms = random_dfms()
    chosen = dfmx.draw_classes(labels, K, g, p=1.0)
    out = dfmx.filter_with_dfms(x, dfms, chosen)
    spec = fft_centred(out).abs()
    for i in range(len(x)):
        keep = dfms[chosen[i]].clone()
        keep[H // 2, H // 2] = True  # DC is kept even where the DFM lacks it
        assert spec[i][:, ~keep].max() < 1e-4, f"image {i}: energy outside DFM {int(chosen[i])}"
        assert torch.allclose(spec[i][:, keep], fft_centred(x[i:i + 1])[0][:, keep].abs(), atol=1e-4)
    assert bool((chosen != labels).all())


def test_untouched_images_are_bit_identical_and_labels_are_not_changed():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, H, H)
    labels = torch.arange(64) % K
    before = labels.clone()
    chosen = dfmx.draw_classes(labels, K, g, p=0.5)
    out = dfmx.filter_with_dfms(x, random_dfms(), chosen)
    assert torch.equal(out[chosen < 0], x[chosen < 0]) and not torch.equal(out[chosen >= 0], x[chosen >= 0])
    assert torch.equal(labels, before)


@pytest.mark.parametrize("draw, rate", [("other", 0.3), ("official", 0.3 * (K - 1) / K)])
def test_the_augmentation_rate_matches_p_and_the_other_class_is_uniform(draw, rate):
    n = 40_000
    labels = torch.arange(n) % K
    chosen = dfmx.draw_classes(labels, K, torch.Generator().manual_seed(2), p=0.3, draw=draw)
    hit = chosen >= 0
    assert abs(hit.float().mean().item() - rate) < 0.01  # 5 sigma of a binomial proportion at n = 40,000
    assert bool((chosen[hit] != labels[hit]).all())
    others = chosen[hit & (labels == 0)]
    share = torch.bincount(others, minlength=K)[1:].float() / len(others)
    assert torch.allclose(share, torch.full((K - 1,), 1 / (K - 1)), atol=0.03)


def test_the_draws_are_deterministic_for_a_seed():
    labels = torch.arange(100) % K
    a = dfmx.draw_classes(labels, K, torch.Generator().manual_seed(3))
    b = dfmx.draw_classes(labels, K, torch.Generator().manual_seed(3))
    c = dfmx.draw_classes(labels, K, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_an_unpaired_position_is_kept_with_its_partner():
    dfms = torch.zeros(2, H, H, dtype=torch.bool)
    dfms[1, 1, 2] = True  # its conjugate partner is not in the map
    x = torch.randn(1, 1, H, H)
    spec = fft_centred(dfmx.filter_with_dfms(x, dfms, torch.tensor([1])))[0, 0].abs()
    kept = dfms[1] | conjugate_mirror(dfms[1])
    kept[H // 2, H // 2] = True
    assert int(kept.sum()) == 3 and bool((spec[kept] > 1e-3).all()) and spec[~kept].max() < 1e-4


@pytest.mark.parametrize("dfms, kw, match", [
    (torch.ones(3, H, H), dict(num_classes=K), "one DFM per class: got 3 DFMs"),
    (torch.ones(K, H + 2, H + 2), dict(size=(H, H)), r"size \(10, 10\) cannot filter images of size \(8, 8\)"),
    (torch.ones(H, H), {}, r"tensor \(K, H, W\)"),
    (torch.full((K, H, H), 0.5), {}, "0/1 masks"),
])
def test_bad_dfms_get_a_clear_error(dfms, kw, match):
    with pytest.raises(ValueError, match=match):
        dfmx.check_dfms(dfms, **kw)


def test_labels_beyond_the_dfms_and_wrong_image_size_are_refused():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        dfmx.draw_classes(torch.tensor([0, 5]), K, torch.Generator())
    with pytest.raises(ValueError, match="cannot filter images of size"):
        dfmx.filter_with_dfms(torch.randn(2, 3, 16, 16), random_dfms(), torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="unknown DFM-X draw"):
        dfmx.draw_classes(torch.tensor([0]), K, torch.Generator(), draw="any")


def test_the_store_is_content_addressed_and_checked(store):
    d = random_dfms(0)
    key = dfmx.store_dfms(d, provenance={"source": "run-a"})
    assert dfmx.store_dfms(d) == key and dfmx.store_dfms(random_dfms(1)) != key
    masks, record = dfmx.load_stored_dfms(key)
    assert torch.equal(masks, d) and record == {"source": "run-a"}
    with pytest.raises(ValueError, match="no DFMs with key 'feedfacefeedface'"):
        dfmx.load_stored_dfms("feedfacefeedface")


def test_the_run_hash_changes_with_the_source_dfms(store):
    base = dict(dataset="cifar10", width=0.0625, epochs=1, batch_size=16, scheduler="onecycle", lr=0.05)
    k1, k2 = dfmx.store_dfms(random_dfms(0)), dfmx.store_dfms(random_dfms(1))
    cfgs = [train.TrainConfig(**base, input_augment="dfmx", input_augment_options={"masks": k, "p": 0.3}) for k in (k1, k2)]
    plain = train.TrainConfig(**base)
    assert len({runs.run_hash(c) for c in (*cfgs, plain)}) == 3
    assert "dfmx" in aug.INPUT_AUGMENTS  # registered on import of fslib.augment


@pytest.mark.slow
def test_training_with_dfmx_runs_and_filters_in_the_loop(store):
    key = dfmx.store_dfms(random_dfms(0, k=4, h=8))
    seen = []
    original = aug.INPUT_AUGMENTS["dfmx"]
    aug.INPUT_AUGMENTS["dfmx"] = lambda x, y, g, **o: seen.append(o) or original(x, y, g, **o)
    try:
        cfg = train.TrainConfig(dataset="cifar10", width=0.0625, epochs=1, batch_size=16, scheduler="onecycle", lr=0.05,
                                input_augment="dfmx", input_augment_options={"masks": key, "p": 0.5})
        t = train.Trainer(cfg, train.load_data(cfg, toy_loader), "cpu", progress=False).fit()
    finally:
        aug.INPUT_AUGMENTS["dfmx"] = original
    assert seen and seen[0] == {"masks": key, "p": 0.5} and len(t.history) == 1
