"""fslib.train and fslib.augment: config validation, batched augmentation, evaluation,
learning-dynamics helpers and a deterministic training loop (tiny models, tiny data)."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from fslib import augment as aug
from fslib import spectral, train
from fslib.data import LabeledImages


# --------------------------------------------------------------------------- helpers
def toy_set(n, split, size=8, num_classes=4, seed=0):
    """Images whose red level encodes the class (learnable), plus noise."""
    g = torch.Generator().manual_seed(seed + (split == "test"))
    labels = torch.arange(n) % num_classes
    images = torch.randint(0, 60, (n, 3, size, size), generator=g)
    images[:, 0] += (labels * 60)[:, None, None]
    return LabeledImages(images.to(torch.uint8), labels, tuple("abcd"[:num_classes]), "cifar10", split, "toy")


def toy_loader(name, split, n=None, seed=0, progress=True, **kw):
    return toy_set(96 if split == "train" else 48, split)


TINY = dict(dataset="cifar10", model="resnet18", width=0.0625, epochs=2, batch_size=16, scheduler="onecycle", lr=0.05)


# --------------------------------------------------------------------------- config
def test_defaults_are_the_paper_recipe_and_json_roundtrip():
    cfg = train.TrainConfig()
    assert (cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay, cfg.batch_size) == (0.01, 0.9, True, 1e-4, 64)
    assert (cfg.scheduler, cfg.plateau_factor, cfg.val_fraction, cfg.augment, cfg.pad) == ("plateau", 0.1, 0.1, "official", 4)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert train.TrainConfig.from_dict(d) == cfg


def test_lists_become_tuples_so_configs_compare_equal():
    a = train.TrainConfig(track_sets=["test", "bandstop:1,2"], track_every=5, crop_scale=[0.5, 1.0])
    b = train.TrainConfig(track_sets=("test", "bandstop:1,2"), track_every=5, crop_scale=(0.5, 1.0))
    assert a == b and hash(a) == hash(b)


@pytest.mark.parametrize("kw, match", [
    (dict(model="resnet19"), "resnet18"),
    (dict(dataset="cifar100"), "cifar10"),
    (dict(scheduler="step"), "plateau, onecycle"),
    (dict(augment="crop"), "official, flipcrop, none"),
    (dict(extra_augment="mixup"), "autoaugment, augmix"),
    (dict(track_sets=("bandstop:5",), track_every=1), "bandstop"),
    (dict(track_every=5), "track_sets"),
    (dict(lr=-1.0), "lr=-1.0"),
    (dict(scheduler="plateau", val_fraction=0.0), "val_fraction"),
    (dict(crop_scale=(0.9, 0.5)), "crop_scale"),
    (dict(precision="fp16"), "fp32, bf16"),
])
def test_bad_values_fail_naming_the_valid_ones(kw, match):
    with pytest.raises(ValueError, match=match):
        train.TrainConfig(**kw)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="epochz"):
        train.TrainConfig.from_dict({"epochz": 3})


# --------------------------------------------------------------------------- augmentation
def test_normalize_uint8_equals_float_and_standardises():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    a, b = aug.normalize(x, mean, std), aug.normalize(x.double() / 255, mean, std)
    assert a.dtype == torch.float32 and torch.allclose(a, b)
    assert torch.allclose(a[:, 1] * 0.25 + 0.2, x[:, 1].float() / 255, atol=1e-6)


def test_geometric_none_is_identity_and_rejects_float():
    x = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(aug.geometric(x, "none", torch.Generator()), x)
    with pytest.raises(ValueError, match="uint8"):
        aug.geometric(x.float(), "official", torch.Generator())
    with pytest.raises(ValueError, match="official, flipcrop, none"):
        aug.geometric(x, "rotate", torch.Generator())


@pytest.mark.parametrize("kind", ["official", "flipcrop"])
def test_without_padding_and_rescaling_each_image_is_itself_or_its_mirror(kind):
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = aug.geometric(x, kind, torch.Generator().manual_seed(1), pad=0, scale=(1.0, 1.0))
    same = (y == x).flatten(1).all(1)
    mirrored = (y == x.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all()
    assert 10 < int(mirrored.sum()) < 54  # about half are flipped, each image on its own


def test_flipcrop_is_an_exact_window_of_the_padded_image():
    x = torch.randint(1, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = aug.geometric(x, "flipcrop", torch.Generator().manual_seed(2), pad=2)
    offsets = set()
    for i in range(16):  # slow direct check: y[i] must equal one of the 5x5x2 windows
        found = []
        for img in (x[i], x[i].flip(-1)):
            padded = torch.nn.functional.pad(img, (2, 2, 2, 2))
            found += [(t, l) for t in range(5) for l in range(5) if torch.equal(padded[:, t:t + 8, l:l + 8], y[i])]
        assert found, f"image {i} is not a window of its padded (flipped) original"
        offsets.add(found[0])
    assert len(offsets) > 3  # per-image offsets, not one for the batch


def test_official_crop_keeps_a_constant_image_constant():
    x = torch.full((8, 3, 16, 16), 123, dtype=torch.uint8)
    y = aug.geometric(x, "official", torch.Generator().manual_seed(0), pad=0)
    assert (y == 123).all()


def test_crop_boxes_fit_and_follow_torchvision_sampling():
    from torchvision.transforms import RandomResizedCrop

    n, size = 3000, 40
    boxes = aug.random_resized_crop_boxes(n, size, size, torch.Generator().manual_seed(0))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= size).all() and (left + w <= size).all()
    img = torch.zeros(3, size, size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ref = torch.tensor([RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3))[2:] for _ in range(n)])
    ours_area, ref_area = (h * w).float() / size**2, (ref[:, 0] * ref[:, 1]).float() / size**2
    assert abs(ours_area.mean() - ref_area.mean()) < 0.025   # means ~0.5, standard error ~0.007
    assert abs(ours_area.std() - ref_area.std()) < 0.025
    assert abs((w / h).float().mean() - (ref[:, 1] / ref[:, 0]).float().mean()) < 0.02


def test_augmentation_is_seeded_by_the_generator_only():
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(8, dtype=torch.long)
    run = lambda s: aug.augment_batch(x, y, torch.Generator().manual_seed(s), kind="official", extra="autoaugment")
    state = torch.get_rng_state()
    a = run(5)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    torch.manual_seed(99)
    assert torch.equal(a, run(5))
    assert not torch.equal(a, run(6))


@pytest.mark.parametrize("name", ["autoaugment", "augmix"])
def test_extra_augmentations_draw_per_image_with_chunk_one(name):
    x = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).expand(24, -1, -1, -1)
    y = torch.zeros(24, dtype=torch.long)
    per_image = aug.extra_augment(x.contiguous(), y, name, torch.Generator().manual_seed(1), chunk=1)
    per_batch = aug.extra_augment(x.contiguous(), y, name, torch.Generator().manual_seed(1), chunk=24)
    assert per_image.dtype == torch.uint8 and per_image.shape == x.shape
    distinct = lambda t: len({bytes(i.numpy().tobytes()) for i in t})
    assert distinct(per_image) > 4
    if name == "autoaugment":  # one op for the whole chunk: identical inputs stay identical
        assert distinct(per_batch) == 1


def test_unknown_extra_augmentation_and_registration():
    x, y = torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="none, autoaugment, augmix"):
        aug.extra_augment(x, y, "cutout", torch.Generator())
    fn = lambda images, labels, generator, chunk: 255 - images
    aug.register_extra_augment("_invert_test", fn)
    try:
        assert (aug.extra_augment(x, y, "_invert_test", torch.Generator()) == 255).all()
        with pytest.raises(ValueError, match="already registered"):
            aug.register_extra_augment("_invert_test", lambda *a: a[0])
    finally:
        del aug.EXTRA_AUGMENTS["_invert_test"]


# --------------------------------------------------------------------------- evaluation
def test_confusion_and_relative_confusion_match_a_direct_count():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (60,), generator=g)
    p0, p1 = torch.randint(0, 3, (60,), generator=g), torch.randint(0, 3, (60,), generator=g)
    conf = train.confusion_matrix(labels, p0, 3)
    for i in range(3):
        for j in range(3):
            assert conf[i, j] == int(((labels == i) & (p0 == j)).sum())
    delta = train.relative_confusion(p0, p1, labels, 3)
    n = np.bincount(labels.numpy(), minlength=3)
    expected = (train.confusion_matrix(labels, p1, 3) - conf) / n[:, None] * 100
    assert np.allclose(delta, expected) and np.allclose(delta.sum(axis=1), 0)
    acc_change = [((p1 == labels) & (labels == i)).sum() - ((p0 == labels) & (labels == i)).sum() for i in range(3)]
    assert np.allclose(np.diag(delta), np.array(acc_change, dtype=float) / n * 100)
    logits = torch.nn.functional.one_hot(p1, 3).float()
    assert np.allclose(train.relative_confusion(p0, logits, labels, 3), delta)


def test_evaluate_reports_accuracy_per_class_and_fpr():
    class Fixed(torch.nn.Module):  # predicts class = first pixel value
        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 3).float()

    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    images = torch.tensor([0, 1, 1, 1, 2, 0]).float().view(6, 1, 1, 1)
    r = train.evaluate(Fixed(), images, labels, 3, batch_size=4, device="cpu")
    assert r["acc"] == pytest.approx(4 / 6)
    assert np.allclose(r["per_class_acc"], [0.5, 1.0, 0.5])
    assert np.allclose(r["fpr"], [1 / 4, 1 / 4, 0.0])
    with pytest.raises(TypeError, match="mean/std"):
        train.evaluate(Fixed(), images.to(torch.uint8), labels, 3)


# --------------------------------------------------------------------------- learned first
def tracking_table():
    rows = []
    acc = {0: [0.0, 1.0, 1.0, 1.0, 1.0], 1: [0.0, 0.2, 0.9, 0.5, 0.95], 2: [0.1, 0.3, 0.4, 0.5, 0.6]}
    fpr = {0: [0.0, 0.9, 0.5, 0.05, 0.0], 1: [0.0] * 5, 2: [0.0] * 5}  # class 0 first wins by predicting everything
    for c in acc:
        for k, it in enumerate([0, 10, 20, 30, 40]):
            rows.append((it, "test", c, acc[c][k], fpr[c][k]))
    return pd.DataFrame(rows, columns=["iteration", "set", "class", "accuracy", "fpr"])


def test_learned_first_definition():
    df = tracking_table()
    plain = train.learned_first(df, 0.8, max_fpr=None).set_index("class")["iteration"]
    assert plain[0] == 10 and plain[1] == 20 and math.isnan(plain[2])
    strict = train.learned_first(df, 0.8, max_fpr=0.1).set_index("class")["iteration"]
    assert strict[0] == 30 and strict[1] == 20
    sustained = train.learned_first(df, 0.8, max_fpr=0.1, sustained=True).set_index("class")["iteration"]
    assert sustained[1] == 40  # drops to 0.5 at 30, so only 40 holds to the end
    with pytest.raises(ValueError, match="test"):
        train.learned_first(df, set="bandstop:1,2")


def test_learned_first_summary_over_seeds():
    df = pd.concat([tracking_table().assign(seed=s) for s in (0, 1)])
    df.loc[(df.seed == 1) & (df["class"] == 1) & (df.iteration == 20), "accuracy"] = 0.0
    first = train.learned_first(df, 0.8, max_fpr=None)
    summary = train.learned_first_summary(first).set_index("class")
    assert summary.loc[1, "mean"] == pytest.approx(30) and summary.loc[1, "std"] == pytest.approx(np.std([20, 40], ddof=1))
    assert summary.loc[2, "n_never"] == 2 and summary.loc[0, "n_seeds"] == 2


# --------------------------------------------------------------------------- tracking sets
def test_track_sets_of_a_natural_dataset():
    test = toy_set(8, "test", size=16)
    assert train.track_set("test", test) is test.images
    full = train.track_set("bandpass:1,2,3,4", test)
    assert torch.allclose(full, test.images.float() / 255, atol=1e-5)
    stop = train.track_set("bandstop:3,4", test)
    energy = spectral.band_energy_fraction(stop.double())
    assert (energy[:, 2:] < 1e-10).all()
    with pytest.raises(ValueError, match="bandpass"):
        train.track_set("lowpass:1", test)


def test_recorder_records_every_k_until_and_restores_train_mode():
    test = toy_set(8, "test")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4)).train()
    rec = train.TrackingRecorder({"test": test.images}, test.labels, 4, every=5, until=12, mean=(0.5,) * 3,
                                 std=(0.2,) * 3, device="cpu")
    for step in range(20):
        rec(step, model)
    df = rec.frame()
    assert sorted(df.iteration.unique()) == [0, 5, 10] and len(df) == 12 and model.training


# --------------------------------------------------------------------------- the training loop
def test_load_data_makes_a_seeded_disjoint_90_10_split():
    cfg = train.TrainConfig(**TINY)
    d = train.load_data(cfg, toy_loader)
    assert len(d.val) == round(0.1 * 96) and len(d.train) + len(d.val) == 96
    assert not set(d.val.extra["index"].tolist()) & set(d.train.extra["index"].tolist())
    again = train.load_data(cfg, toy_loader)
    other = train.load_data(train.TrainConfig(**{**TINY, "seed": 1}), toy_loader)
    assert torch.equal(again.val.extra["index"], d.val.extra["index"])
    assert not torch.equal(other.val.extra["index"], d.val.extra["index"])


def test_same_seed_gives_the_same_weights_and_history():
    def fit(seed):
        cfg = train.TrainConfig(**{**TINY, "seed": seed, "augment": "official"})
        return train.Trainer(cfg, train.load_data(cfg, toy_loader), "cpu", progress=False).fit()

    state = torch.get_rng_state()
    a, b, c = fit(0), fit(0), fit(1)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's global RNG is untouched
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    timing = ["seconds", "cpu_seconds"]
    assert a.history_frame().drop(columns=timing).equals(b.history_frame().drop(columns=timing))
    assert not torch.equal(a.model.classifier.weight, c.model.classifier.weight)
    assert not a.model.training and a.step == 2 * (86 // 16)


def test_bf16_training_is_deterministic_and_really_runs_in_bf16():
    def fit(precision):
        cfg = train.TrainConfig(**{**TINY, "precision": precision, "channels_last": True,
                                   "track_every": 4, "track_until": 8, "track_sets": ("test",)})
        return train.Trainer(cfg, train.load_data(cfg, toy_loader), "cpu", progress=False).fit()

    a, b, f = fit("bf16"), fit("bf16"), fit("fp32")
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    assert a.recorder.frame().equals(b.recorder.frame())
    wa, wf = a.model.classifier.weight, f.model.classifier.weight
    assert wa.dtype == torch.float32  # autocast: the weights stay fp32
    assert not torch.equal(wa, wf)    # ... but the steps ran in bf16 (closeness: the predict test below)


def test_predict_in_bf16_is_close_to_fp32_and_rejects_unknown_precision():
    torch.manual_seed(0)
    model = train.models.build("resnet18", 4, width=0.0625)
    x = torch.randn(8, 3, 16, 16)
    lf, lb = train.predict(model, x, device="cpu"), train.predict(model, x, device="cpu", precision="bf16")
    assert lb.dtype == torch.float32 and not torch.equal(lf, lb)
    assert torch.allclose(lf, lb, atol=0.05 * lf.abs().max().item())
    with pytest.raises(ValueError, match="fp32, bf16"):
        train.predict(model, x, device="cpu", precision="half")


def test_max_iters_stops_mid_epoch_and_hooks_see_every_step():
    seen = []
    cfg = train.TrainConfig(**{**TINY, "max_iters": 7, "epochs": 5, "track_every": 3, "track_until": 6,
                                "track_sets": ("test", "bandstop:1")})
    t = train.Trainer(cfg, train.load_data(cfg, toy_loader), "cpu", hooks=[lambda s, m: seen.append(s)], progress=False)
    t.fit()
    assert t.step == 7 and seen == list(range(8)) and len(t.history) == 2
    tracking = t.recorder.frame()
    assert sorted(tracking.iteration.unique()) == [0, 3, 6] and set(tracking.set) == {"test", "bandstop:1"}


@pytest.mark.slow
def test_training_learns_an_easy_task():
    cfg = train.TrainConfig(**{**TINY, "epochs": 6, "augment": "flipcrop"})
    t = train.Trainer(cfg, train.load_data(cfg, toy_loader), "cpu", progress=False).fit()
    d = train.load_data(cfg, toy_loader)
    r = train.evaluate(t.model, d.test.images, d.test.labels, 4, device="cpu", mean=t.mean, std=t.std)
    assert r["acc"] > 0.6  # chance is 0.25; the red level separates the classes


def test_synthetic_track_sets_are_the_synthetic_modules_variants(tmp_path, monkeypatch):
    from fslib import data, synthetic

    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path))
    test = data.load("syn_b2", "test", n=32, progress=False)
    images, labels = synthetic.variant("syn_b2", "bandstop", (1, 3), "test", n=32)
    assert torch.equal(train.track_set("bandstop:3,1", test), images) and torch.equal(labels, test.labels)


def test_dropout_model_is_deterministic_too():
    def loader(name, split, n=None, seed=0, progress=True, **kw):
        return toy_set(64 if split == "train" else 16, split, size=32)

    cfg = train.TrainConfig(**{**TINY, "model": "alexnet", "epochs": 1, "width": 0.0625})
    runs = [train.Trainer(cfg, train.load_data(cfg, loader), "cpu", progress=False).fit() for _ in range(2)]
    a, b = (torch.cat([p.flatten() for p in t.model.parameters()]) for t in runs)
    assert torch.equal(a, b)
