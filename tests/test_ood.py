import math

import pandas as pd
import pytest
import torch
from torch import nn

from fslib.data import LabeledImages
from fslib.ood import (
    RestrictedLogits,
    accuracy_table,
    cue_conflict_by_class,
    cue_conflict_scores,
    dfm_energy_fraction,
    imagenet_sct_table,
    map_labels,
    map_predictions,
    shortcut_transfer,
    transfer_matrix,
)
from fslib.spectral import fft_centred

# ----------------------------------------------------------------------------- label spaces


def test_restricted_logits_agree_with_map_predictions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 10, generator=g)
    classes = [0, 1, 2, 3, 5, 8, 9]
    model = RestrictedLogits(nn.Identity(), classes)
    out = model(logits)
    assert out.shape == (50, 7)
    assert torch.equal(out, logits[:, classes])
    preds = map_predictions(logits, classes)
    assert torch.equal(preds, torch.tensor(classes)[out.argmax(1)])
    # the slow way: the best allowed class of each row
    slow = [max(classes, key=lambda c: logits[i, c].item()) for i in range(50)]
    assert preds.tolist() == slow


def test_restricted_logits_reject_bad_classes():
    with pytest.raises(ValueError, match="distinct"):
        RestrictedLogits(nn.Identity(), [1, 1])
    with pytest.raises(ValueError, match="exceed"):
        RestrictedLogits(nn.Identity(), [0, 12])(torch.zeros(2, 10))


def test_map_labels_translates_and_marks_unmapped():
    mapping = [-1, 3, -1, 0]
    assert map_labels(torch.tensor([1, 3, 0, 2]), mapping).tolist() == [3, 0, -1, -1]
    with pytest.raises(ValueError, match="0..3"):
        map_labels(torch.tensor([4]), mapping)


# ----------------------------------------------------------------------------- texture vs shape


def _conflict_labels(n=400, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = torch.randint(0, k, (n,), generator=g)
    texture = torch.randint(0, k, (n,), generator=g)
    return shape, texture, g


def test_pure_shape_and_pure_texture_classifiers():
    shape, texture, _ = _conflict_labels()
    s = cue_conflict_scores(shape, shape, texture)
    assert s["shape_acc"] == 1.0 and s["texture_bias"] == 0.0
    t = cue_conflict_scores(texture, shape, texture)
    assert t["texture_acc"] == 1.0 and t["texture_bias"] == 1.0
    assert s["n_conflict"] == int((shape != texture).sum())


def test_texture_bias_matches_a_direct_count():
    shape, texture, g = _conflict_labels(seed=1)
    texture[:20] = -1  # textures without a counterpart never count
    shape[20:30] = -1
    preds = torch.randint(0, 5, (len(shape),), generator=g)
    s = cue_conflict_scores(preds, shape, texture)
    n_shape = n_texture = 0
    for p, a, b in zip(preds.tolist(), shape.tolist(), texture.tolist()):
        if a >= 0 and b >= 0 and a != b:
            n_shape += p == a
            n_texture += p == b
    assert math.isclose(s["texture_bias"], n_texture / (n_shape + n_texture))
    valid = shape >= 0
    assert math.isclose(s["shape_acc"], (preds == shape)[valid].double().mean().item())
    assert s["n_texture"] == int((texture >= 0).sum())


def test_no_texture_labels_gives_only_shape_accuracy():
    s = cue_conflict_scores(torch.tensor([1, 2, 2]), torch.tensor([1, 2, 0]))
    assert math.isclose(s["shape_acc"], 2 / 3) and math.isnan(s["texture_bias"])


def test_by_class_shape_accuracy_averages_to_the_overall():
    shape, texture, g = _conflict_labels(seed=2)
    preds = torch.randint(0, 5, (len(shape),), generator=g)
    table = cue_conflict_by_class(preds, shape, texture, classes=range(5))
    overall = cue_conflict_scores(preds, shape, texture)
    weighted = (table["shape_acc"] * table["n_shape"]).sum() / table["n_shape"].sum()
    assert math.isclose(weighted, overall["shape_acc"])
    assert table["n_texture"].sum() == len(shape)
    with pytest.raises(ValueError, match="class names"):
        cue_conflict_by_class(preds, shape, texture, classes=[0, 1], class_names=["a"])


# ----------------------------------------------------------------------------- transfer matrices


def test_accuracy_table_oracle_constant_and_matrix_order():
    g = torch.Generator().manual_seed(3)
    sets = {}
    for name in ("syn_b2", "syn_b1"):
        labels = torch.randint(0, 4, (60,), generator=g)
        images = labels[:, None, None, None].expand(60, 1, 2, 2).to(torch.uint8)  # label coded in pixels
        sets[name] = (images, labels)
    predictors = {
        "oracle": lambda x: x[:, 0, 0, 0].long(),
        "always_2": lambda x: torch.full((len(x),), 2),
    }
    table = accuracy_table(predictors, sets, class_names=["C0", "C1", "C2", "C3"])
    m = transfer_matrix(table)
    assert list(m.index) == ["oracle", "always_2"] and list(m.columns) == ["syn_b2", "syn_b1"]
    assert (m.loc["oracle"] == 1.0).all()
    for name, (_, labels) in sets.items():
        assert math.isclose(m.loc["always_2", name], (labels == 2).double().mean().item())
    per_class = transfer_matrix(table, "C2")
    assert (per_class.loc["always_2"] == 1.0).all()
    with pytest.raises(ValueError, match="not in the table"):
        transfer_matrix(table, "C9")


# ----------------------------------------------------------------------------- energy in DFMs


def _cosine(h, w, r, s, phase=0.0):
    y = torch.arange(h, dtype=torch.float64)[:, None]
    x = torch.arange(w, dtype=torch.float64)[None, :]
    return torch.cos(2 * math.pi * ((r - h // 2) * y / h + (s - w // 2) * x / w) + phase)


def test_energy_fraction_of_a_pure_sinusoid_and_complementary_masks():
    img = (_cosine(8, 8, 5, 6) + 2.0).expand(1, 3, 8, 8)  # DC + one conjugate pair
    inside = torch.zeros(2, 8, 8, dtype=torch.bool)
    inside[0, 5, 6] = inside[0, 3, 2] = True  # the pair
    inside[1, 6, 4] = True  # elsewhere
    frac = dfm_energy_fraction(img, inside)
    assert torch.allclose(frac, torch.tensor([[1.0, 0.0]], dtype=torch.float64), atol=1e-12)
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    m = torch.rand(8, 8, generator=torch.Generator().manual_seed(1)) < 0.3
    both = dfm_energy_fraction(x, torch.stack([m, ~m]))
    assert torch.allclose(both.sum(1), torch.ones(5, dtype=torch.float64))
    x8 = (x * 255).round().to(torch.uint8)
    assert torch.allclose(dfm_energy_fraction(x8, m[None]), dfm_energy_fraction(x8.double() / 255, m[None]))


# ----------------------------------------------------------------------------- shortcut transfer

H = W = 8
FREQS = [(4, 5), (5, 4), (5, 6), (6, 4)]  # the one frequency each class's logit reads


class FourierProbe(nn.Module):
    """Logit k = amplitude at FREQS[k] (summed over channels); class 3 wins on blank input."""

    def forward(self, x):
        amp = fft_centred(x).abs().sum(1) / (H * W)
        logits = torch.stack([amp[:, r, s] for r, s in FREQS], dim=1)
        return logits + torch.tensor([0.0, 0.0, 0.0, 0.05], dtype=logits.dtype)


def _set(freq_of_class, per_class=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for c, (r, s) in freq_of_class.items():
        for _ in range(per_class):
            phase = float(torch.rand(1, generator=g)) * 2 * math.pi
            img = _cosine(H, W, r, s, phase).expand(3, H, W) + 0.01 * torch.randn(3, H, W, generator=g, dtype=torch.float64)
            images.append(img.float())
            labels.append(c)
    return torch.stack(images), torch.tensor(labels)


def _dfms():
    d = torch.zeros(4, H, W, dtype=torch.bool)
    for k, (r, s) in enumerate(FREQS):
        d[k, r, s] = True
    return d


def test_shortcut_transfer_finds_the_planted_shortcut_that_survives():
    id_images, id_labels = _set({c: FREQS[c] for c in range(4)}, seed=0)
    # OOD: class 0 keeps its frequency, class 2's energy moved to class 1's (not allowed), class 3 kept
    ood_images, ood_labels = _set({0: FREQS[0], 2: FREQS[1], 3: FREQS[3]}, seed=1)
    both = shortcut_transfer(
        FourierProbe(), id_images, id_labels, {"ood": (ood_images, ood_labels), "id again": (id_images, id_labels)},
        _dfms(), classes=[0, 2, 3], class_names=["a", "c", "d"], n_boot=50, n_null=5, device="cpu", progress=False,
    )
    again = both[both.set == "id again"]
    assert (again["ood_tpr"].to_numpy() == again["id_tpr"].to_numpy()).all()
    assert (again["energy_retained"] == 1.0).all()
    table = both[both.set == "ood"].set_index("class")
    assert list(table["n_id"]) == [6, 6, 6] and list(table["n_ood"]) == [6, 6, 6]  # class 1 left out
    assert (table["id_acc"] == 1.0).all() and (table["id_tpr"] == 1.0).all()
    assert table.loc[0, "id_fpr"] == 0.0 and table.loc[2, "id_fpr"] == 0.0
    assert table.loc[0, "ood_acc"] == 1.0 and table.loc[0, "ood_tpr"] == 1.0
    assert table.loc[2, "ood_acc"] == 0.0 and table.loc[2, "ood_tpr"] == 0.0
    assert table.loc[0, "energy_retained"] > 0.95 and table.loc[2, "energy_retained"] < 0.05
    assert table.loc[3, "ood_fpr"] == 1.0  # blank DFM-3 inputs of classes 0 and 2 go to class 3
    with pytest.raises(ValueError, match=r"no image of classes \[1\]"):
        shortcut_transfer(FourierProbe(), id_images, id_labels, {"ood": (ood_images, ood_labels)}, _dfms(),
                          classes=[0, 1], n_boot=0, n_null=0, device="cpu", progress=False)


def test_imagenet_sct_table_on_fake_sets_matches_shortcut_transfer():
    id_images, id_labels = _set({c: FREQS[c] for c in range(4)}, seed=2)
    ood_images, ood_sct = _set({0: FREQS[3], 1: FREQS[0], 2: FREQS[2]}, seed=3)  # SCT classes 0..2

    def to_uint8(x):
        return ((x + 1.5) * 80).round().clamp(0, 255).to(torch.uint8)

    def normalize(u8):
        return u8.float() / 80 - 1.5

    in10 = LabeledImages(to_uint8(id_images), id_labels, ("w", "x", "y", "z"), "imagenet10", "test", "fake")
    sct = LabeledImages(to_uint8(ood_images), ood_sct, ("z2", "w2", "y2"), "imagenet_sct", "test", "fake")
    pairing = [3, 0, 2]
    kw = dict(n_boot=0, n_null=0, device="cpu", progress=False)
    table = imagenet_sct_table(FourierProbe(), in10, sct, _dfms(), normalize, pairing=pairing, **kw)
    assert list(table["class"]) == [0, 2, 3]
    assert list(table["ood_name"]) == ["w2", "y2", "z2"] and list(table["name"]) == ["w", "y", "z"]
    direct = shortcut_transfer(FourierProbe(), normalize(in10.images), id_labels,
                               {"ImageNet-SCT": (normalize(sct.images), map_labels(ood_sct, pairing))}, _dfms(),
                               classes=[0, 2, 3], **kw)
    pd.testing.assert_frame_equal(table.drop(columns=["ood_name", "name"]), direct.drop(columns=["name"]))
    assert (table["ood_acc"] == 1.0).all()
    with pytest.raises(ValueError, match="pairing"):
        imagenet_sct_table(FourierProbe(), in10, sct, _dfms(), normalize, pairing=[0, 1], **kw)


# ----------------------------------------------------------------------------- transfer across models
from types import SimpleNamespace  # noqa: E402

from fslib import dfm as dfm_module  # noqa: E402
from fslib.dfm import run_dfms  # noqa: E402  (the one DFM cache every chapter uses)
from fslib.ood import cross_model_table, iou_matrix, shortcut_summary  # noqa: E402


def _fake_run(tmp_path, name="probe"):
    def normalize(u8):
        return u8.float() / 80 - 1.5

    return SimpleNamespace(model=FourierProbe(), normalize=normalize, path=tmp_path / name)


def _uint8_set(seed):
    images, labels = _set({c: FREQS[c] for c in range(4)}, per_class=3, seed=seed)
    return ((images + 1.5) * 80).round().clamp(0, 255).to(torch.uint8), labels


def test_run_dfms_of_a_run_finds_the_planted_frequencies_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path / "cache"))
    images, labels = _uint8_set(seed=4)
    run = _fake_run(tmp_path)
    saved = run_dfms(run, images, labels, thresholds=(2 / 64, 0.05), device="cpu", progress=False)
    for k, (r, s) in enumerate(FREQS):
        assert saved.dfms[2 / 64][k, r, s]  # the pair the class's logit reads is its top pair
    assert saved.dfms[2 / 64].sum().item() == 4 * 2
    monkeypatch.setattr(dfm_module, "ablation_loss", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = run_dfms(run, images, labels, thresholds=(0.05,), device="cpu", progress=False)
    assert torch.equal(again.dfms[0.05], saved.dfms[0.05])
    assert again.provenance["counts"] == [3, 3, 3, 3]
    with pytest.raises(TypeError, match="uint8"):
        run_dfms(run, images.float(), labels)


def test_iou_matrix_is_symmetric_with_unit_diagonal():
    g = torch.Generator().manual_seed(0)
    maps = {k: torch.rand(3, 8, 8, generator=g) < 0.2 for k in ("a", "b", "c")}
    m = iou_matrix(maps)
    assert (pd.Series([m.loc[k, k] for k in maps]) == 1.0).all()
    assert m.equals(m.T.rename_axis(index="model", columns="model"))
    assert math.isclose(m.loc["a", "b"], dfm_module.iou(maps["a"], maps["b"]).mean().item())


def test_cross_model_table_diagonal_is_each_models_own_test(tmp_path):
    images, labels = _uint8_set(seed=5)
    runs = {"p": _fake_run(tmp_path, "p"), "q": _fake_run(tmp_path, "q")}
    shifted = torch.roll(_dfms(), 1, dims=0)  # q's "DFMs" belong to the wrong classes
    kw = dict(n_boot=0, n_null=0, device="cpu", progress=False)
    table = cross_model_table(runs, {"p": _dfms(), "q": shifted}, images, labels, class_names=list("wxyz"), **kw)
    assert len(table) == 2 * 2 * 4 and list(table["name"][:4]) == list("wxyz")
    own = dfm_module.evaluate_dfms(runs["p"].model, runs["p"].normalize(images), labels, _dfms(), **kw)
    block = table[(table.dfm_source == "p") & (table.model == "p")].reset_index(drop=True)
    assert block["tpr"].tolist() == own["tpr"].tolist()
    summary = shortcut_summary(table, accuracy={"p": 0.9, "q": 0.8})
    assert summary.loc[("p", "q"), "mean_tpr"] == 1.0  # the probe reads exactly the planted pairs
    assert summary.loc[("q", "p"), "mean_tpr"] < 1.0
    assert summary.loc[("q", "q"), "test_acc"] == 0.8


def test_stimuli_table_restricts_labels_and_matches_direct_scores():
    from fslib.ood import stimuli_table

    g = torch.Generator().manual_seed(7)
    n = 60
    images = torch.randint(0, 256, (n, 3, 2, 2), dtype=torch.uint8, generator=g)
    shape = torch.randint(0, 4, (n,), generator=g)
    texture = torch.randint(0, 4, (n,), generator=g)
    stim = LabeledImages(images, torch.zeros(n, dtype=torch.long), ("a",), "cue", "test", "fake",
                         {"cifar10_labels": shape, "cifar10_texture_labels": texture})
    plain = LabeledImages(images, shape, ("a",), "id", "test", "fake")
    logits = torch.randn(n, 5, generator=g)
    lookup = {images[i].numpy().tobytes(): logits[i] for i in range(n)}

    def predict(x):
        return torch.stack([lookup[img.numpy().tobytes()] for img in x])

    table = stimuli_table({"m": predict}, {"stim": stim, "id": plain}, classes=[0, 1, 3])
    preds = map_predictions(logits, [0, 1, 3])
    s2 = torch.where(shape == 2, -1, shape)
    t2 = torch.where(texture == 2, -1, texture)
    want = cue_conflict_scores(preds, s2, t2)
    row = table[table.set == "stim"].iloc[0]
    assert math.isclose(row["texture_bias"], want["texture_bias"]) and row["n_conflict"] == want["n_conflict"]
    assert math.isclose(row["shape_acc"], want["shape_acc"])
    row = table[table.set == "id"].iloc[0]
    assert row["n_shape"] == int((shape != 2).sum()) and math.isnan(row["texture_bias"])


def test_transfer_summary_applies_its_rule():
    from fslib.ood import transfer_summary

    def part(name, id_sc, ood_sc, acc):
        n = len(acc)
        return pd.DataFrame({"set": name, "id_shortcut": id_sc, "ood_shortcut": ood_sc, "ood_acc": acc,
                             "ood_tpr": [0.1 * i for i in range(n)], "energy_retained": [1.0] * n})

    table = pd.concat([
        part("a", [True, True, False], [True, False, True], [0.9, 0.2, 0.4]),   # transfers, helps
        part("b", [True, True, False], [True, False, True], [0.1, 0.8, 0.4]),   # transfers, no help
        part("c", [True, False, False], [False, True, True], [0.5, 0.5, 0.5]),  # nothing transfers
    ])
    s = transfer_summary(table)
    assert s.loc["a", "verdict"] == "holds" and s.loc["a", "n_transfer"] == 1
    assert math.isclose(s.loc["a", "ood_acc_other"], 0.3)
    assert s.loc["b", "verdict"] == "partly" and s.loc["c", "verdict"] == "does not hold"
    assert s.loc["c", "n_ood_shortcut"] == 2 and s.loc["c", "n_id_shortcut"] == 1
    assert math.isclose(s.loc["a", "spearman_tpr_acc"], -0.5)


def test_robustness_verdict_rule_and_runs_table():
    from fslib.ood import robustness_verdict, runs_table

    assert robustness_verdict({"b": 0, "x": 2, "y": 1}, "b") == "holds"
    assert robustness_verdict({"b": 5, "x": 0, "y": 0}, "b") == "does not hold"
    assert robustness_verdict({"b": 5, "x": 0, "y": 1}, "b") == "partly"
    with pytest.raises(ValueError, match="baseline"):
        robustness_verdict({"x": 1}, "b")
    cfg = SimpleNamespace(model="resnet18", width=0.5, extra_augment="ampswap", epochs=3)
    run = SimpleNamespace(config=cfg, metrics={"test_acc": 0.8, "parameters": 10, "train_seconds": 120.0, "epochs": 3})
    weak = SimpleNamespace(config=cfg, metrics={"test_acc": 0.7, "parameters": 10, "train_seconds": 60.0, "epochs": 2})
    t = runs_table({"r": run, "w": weak}, min_acc=0.75)
    assert t.loc["r", "train_minutes"] == 2.0 and t.loc["r", "extra_augment"] == "ampswap"
    assert math.isclose(t.loc["r", "minutes_per_epoch"], 2 / 3) and t.loc["w", "minutes_per_epoch"] == 0.5
    assert t["meets_min_acc"].tolist() == [True, False]
    assert "meets_min_acc" not in runs_table({"r": run}).columns


def test_model_label_names_pairs_and_keeps_unknown_names():
    from fslib.ood import model_label

    assert model_label("resnet18") == "ResNet18"
    assert model_label("resnet18", "ampswap") == "ResNet18 + amplitude swap"
    assert model_label("resnet50", "autoaugment") == "ResNet50 + AutoAugment"
    assert model_label("newnet", "newaug") == "newnet + newaug"


def test_describe_recipe_lists_exactly_the_fields_that_differ_from_the_paper():
    from fslib.ood import describe_recipe
    from fslib.train import TrainConfig

    assert describe_recipe(TrainConfig(dataset="cifar10", model="resnet18")) == "as the paper"
    paper = TrainConfig(dataset="cifar10", model="vgg16")
    text = describe_recipe(TrainConfig(dataset="cifar10", model="vgg16", width=0.25, epochs=8))
    assert text == f"width 0.25 (paper {paper.width}); epochs 8 (paper {paper.epochs})"
    tracked = TrainConfig(dataset="cifar10", model="resnet18", epochs=3, track_every=5, track_until=10, track_sets=("test",))
    assert describe_recipe(tracked) == f"epochs 3 (paper {paper.epochs})"
    assert describe_recipe(TrainConfig(dataset="cifar10", model="resnet18", n_train=100)) == "n_train 100 (paper unset)"
