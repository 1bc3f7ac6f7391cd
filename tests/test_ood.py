import math

import pandas as pd
import pytest
import torch
from fourier_probe import FREQS, FourierProbe, planted_dfms, planted_set, probe_subject, uint8_set
from torch import nn

from fslib.images import LabeledImages
from fslib.ood import (
    RestrictedLogits,
    accuracy_table,
    cue_conflict_by_class,
    cue_conflict_scores,
    imagenet_sct_table,
    map_labels,
    map_predictions,
    shortcut_transfer,
    transfer_by_protocol,
    transfer_matrix,
    transfer_summary,
)
from fslib.protocols import Variant, VariantAnalysis

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


def test_shortcut_transfer_finds_the_planted_shortcut_that_survives():
    id_images, id_labels = planted_set({c: FREQS[c] for c in range(4)}, seed=0)
    # OOD: class 0 keeps its frequency, class 2's energy moved to class 1's (not allowed), class 3 kept
    ood_images, ood_labels = planted_set({0: FREQS[0], 2: FREQS[1], 3: FREQS[3]}, seed=1)
    both = shortcut_transfer(
        FourierProbe(), id_images, id_labels, {"ood": (ood_images, ood_labels), "id again": (id_images, id_labels)},
        planted_dfms(), classes=[0, 2, 3], class_names=["a", "c", "d"], n_boot=50, n_null=5, device="cpu", progress=False,
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
        shortcut_transfer(FourierProbe(), id_images, id_labels, {"ood": (ood_images, ood_labels)}, planted_dfms(),
                          classes=[0, 1], n_boot=0, n_null=0, device="cpu", progress=False)


def test_imagenet_sct_table_on_fake_sets_matches_shortcut_transfer():
    id_images, id_labels = planted_set({c: FREQS[c] for c in range(4)}, seed=2)
    ood_images, ood_sct = planted_set({0: FREQS[3], 1: FREQS[0], 2: FREQS[2]}, seed=3)  # SCT classes 0..2

    def to_uint8(x):
        return ((x + 1.5) * 80).round().clamp(0, 255).to(torch.uint8)

    def normalize(u8):
        return u8.float() / 80 - 1.5

    in10 = LabeledImages(to_uint8(id_images), id_labels, ("w", "x", "y", "z"), "imagenet10", "test", "fake")
    sct = LabeledImages(to_uint8(ood_images), ood_sct, ("z2", "w2", "y2"), "imagenet_sct", "test", "fake")
    pairing = [3, 0, 2]
    kw = dict(n_boot=0, n_null=0, device="cpu", progress=False)
    table = imagenet_sct_table(FourierProbe(), in10, sct, planted_dfms(), normalize, pairing=pairing, **kw)
    assert list(table["class"]) == [0, 2, 3]
    assert list(table["ood_name"]) == ["w2", "y2", "z2"] and list(table["name"]) == ["w", "y", "z"]
    direct = shortcut_transfer(FourierProbe(), normalize(in10.images), id_labels,
                               {"ImageNet-SCT": (normalize(sct.images), map_labels(ood_sct, pairing))}, planted_dfms(),
                               classes=[0, 2, 3], **kw)
    pd.testing.assert_frame_equal(table.drop(columns=["ood_name", "name"]), direct.drop(columns=["name"]))
    assert (table["ood_acc"] == 1.0).all()
    with pytest.raises(ValueError, match="pairing"):
        imagenet_sct_table(FourierProbe(), in10, sct, planted_dfms(), normalize, pairing=[0, 1], **kw)


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








def test_transfer_by_protocol_is_the_transfer_summary_of_each_variants_dfms():
    images, labels = uint8_set(seed=0, per_class=4)
    subject = probe_subject()
    ood_images, ood_labels = planted_set({0: FREQS[0], 2: FREQS[1], 3: FREQS[3]}, seed=1)
    ood_sets = {"ood": (ood_images, ood_labels)}
    half = torch.arange(0, len(labels), 2)
    analyses = {"book": VariantAnalysis(Variant("book"), half, half, planted_dfms(), None),
                "wrong": VariantAnalysis(Variant("wrong"), half, half + 1, torch.roll(planted_dfms(), 1, dims=0), None)}
    kw = dict(classes=[0, 2, 3], n_boot=0, n_null=5, device="cpu", progress=False)
    out = transfer_by_protocol(subject, images, labels, ood_sets, analyses, **kw)
    assert list(out.index) == [("book (default)", "ood"), ("wrong", "ood")]
    for name, key in (("book", "book (default)"), ("wrong", "wrong")):
        a = analyses[name]
        direct = transfer_summary(shortcut_transfer(subject.model, subject.normalize(images[a.score]), labels[a.score],
                                                    ood_sets, a.dfms, **kw))
        assert out.loc[key].equals(direct)
    assert out.loc[("book (default)", "ood"), "n_transfer"] > out.loc[("wrong", "ood"), "n_transfer"]
    with pytest.raises(ValueError, match="default variant 'book' is not among"):
        transfer_by_protocol(subject, images, labels, ood_sets, {"wrong": analyses["wrong"]}, **kw)
