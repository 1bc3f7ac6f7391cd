"""fslib.mitigation and the chapter-8 rules of fslib.report: removed, moved or kept?"""

import pandas as pd
import pytest
import torch
import torch.nn as nn

from fslib import mitigation, recipes, report
from fslib.augment import dfmx
from fslib.images import LabeledImages
from fslib.inference import Classifier


def table(tpr, shortcut, fpr=None):
    n = len(tpr)
    return pd.DataFrame({"class": range(n), "tpr": tpr, "fpr": fpr or [0.05] * n, "shortcut": shortcut})


def test_outcomes_follow_the_old_and_the_recomputed_dfms():
    before = table([0.9, 0.8, 0.7, 0.2], [True, True, True, False])
    old = table([0.85, 0.1, 0.1, 0.1], [True, False, False, False])
    new = table([0.9, 0.8, 0.1, 0.9], [True, True, False, True])
    out = mitigation.shortcut_outcomes(before, old, new, class_names="abcd")
    assert out["outcome"].tolist() == ["kept", "moved", "removed", "new"]
    assert out["name"].tolist() == list("abcd") and out.loc[1, "new_tpr"] == 0.8 and out.loc[1, "old_tpr"] == 0.1


def test_outcomes_refuse_tables_that_do_not_match():
    with pytest.raises(ValueError, match="old_on_new has 3 classes, the others 4"):
        mitigation.shortcut_outcomes(table([0.1] * 4, [False] * 4), table([0.1] * 3, [False] * 3), table([0.1] * 4, [False] * 4))
    with pytest.raises(ValueError, match="lacks"):
        mitigation.shortcut_outcomes(pd.DataFrame({"class": [0]}), table([0.1], [False]), table([0.1], [False]))


def test_summary_counts_verdicts_and_claims_against_the_control():
    before = table([0.9, 0.9, 0.9, 0.9], [True, True, True, True])
    control = mitigation.shortcut_outcomes(before, before, before)                  # everything kept
    moved = mitigation.shortcut_outcomes(before, table([0.1] * 4, [False] * 4), before)
    gone = mitigation.shortcut_outcomes(before, table([0.1] * 4, [False] * 4), table([0.1] * 4, [False] * 4))
    s = mitigation.outcome_summary({"control": control, "A": moved, "B": gone}, control="control",
                                   accuracy={"control": 0.8, "A": 0.7, "B": 0.6})
    assert s["verdict"].tolist() == ["keeps", "moves", "removes"]
    assert s["claim"].tolist() == ["-", "does not hold", "holds"]
    assert s.loc["A", "moved"] == 4 and s.loc["B", "n_after"] == 0 and s.loc["B", "test_acc"] == 0.6
    with pytest.raises(ValueError, match="control 'ctrl' is not among"):
        mitigation.outcome_summary({"A": moved}, control="ctrl")


def test_verdict_rules_and_their_errors():
    assert report.mitigation_verdict(["none", "new"]) == "nothing to remove"
    assert report.mitigation_claim("removes", 2, 2) == "partly"
    with pytest.raises(ValueError, match="unknown outcome"):
        report.mitigation_verdict(["gone"])
    with pytest.raises(ValueError, match="unknown verdict"):
        report.mitigation_claim("vanishes", 0, 1)


def test_dfm_shift_is_one_for_unchanged_maps_and_tracks_the_radius():
    old = torch.zeros(2, 8, 8, dtype=torch.bool)
    old[:, 4, 5] = old[:, 4, 3] = True            # radius 1
    far = torch.zeros_like(old)
    far[:, 4, 7] = far[:, 4, 1] = True            # radius 3
    s = mitigation.dfm_shift(old, {"same": old, "far": far}, ["a", "b"])
    assert s[s.model == "same"]["iou"].tolist() == [1.0, 1.0] and s[s.model == "far"]["iou"].tolist() == [0.0, 0.0]
    assert s[s.model == "far"]["radius_new"].tolist() == [3.0, 3.0] and s["radius_old"].eq(1.0).all()


class MeanBrightness(nn.Module):
    """Class 1 when the image is brighter than average: blind to everything but DC."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([-m, m], dim=1)


def test_band_accuracy_of_a_dc_only_model_survives_every_band_removal():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 2
    images = (torch.rand(40, 3, 8, 8, generator=g) * 100 + 100 * labels[:, None, None, None]).to(torch.uint8)
    test = LabeledImages(images, labels, ("dark", "bright"), "cifar10", "test", "toy")
    subject = Classifier(MeanBrightness(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), ("dark", "bright"))
    out = mitigation.band_accuracy({"dc": subject}, test, device="cpu")
    assert out["set"].tolist() == list(mitigation.BAND_SETS) and len(out) == 11
    acc = out.set_index("set")["acc"]
    high_only = [f"bandpass:{b}" for b in (2, 3, 4)]  # these lose DC: every image looks equally dark
    assert acc.drop(high_only).eq(1.0).all() and acc[high_only].eq(0.5).all()

def test_mitigation_recipes_name_their_method_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path))
    good = dfmx.store_dfms(torch.ones(10, 32, 32, dtype=torch.bool))
    for scale in recipes.SCALES:
        control = recipes.mitigation("none", scale=scale)
        dx = recipes.mitigation("dfmx", masks=good, scale=scale)
        aa = recipes.mitigation("aaua_aad", scale=scale)
        assert dict(dx.input_augment_options)["masks"] == good and aa.objective == "aaua_aad"
        assert len({control, dx, aa}) == 3 and control.track_every == 0
        assert control.init_from == dx.init_from == aa.init_from  # the same start for every arm
    assert recipes.mitigation(scale="default").init_from.startswith("resnet18-cifar10-")
    assert recipes.mitigation(scale="paper").seed == 1 and recipes.mitigation(scale="paper").init_from is None
    with pytest.raises(ValueError, match="one DFM per class: got 4"):
        recipes.mitigation("dfmx", masks=dfmx.store_dfms(torch.ones(4, 32, 32)))
    with pytest.raises(ValueError, match="size"):
        recipes.mitigation("dfmx", masks=dfmx.store_dfms(torch.ones(10, 16, 16)))
    with pytest.raises(ValueError, match="needs the key"):
        recipes.mitigation("dfmx")
    with pytest.raises(ValueError, match="unknown mitigation"):
        recipes.mitigation("mixup")
