import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from fourier_probe import planted_dfms, probe_subject, uint8_set

from fslib import dfm, report
from fslib.compare import cross_model_table, iou_matrix, model_label, protocol_table, runs_table, shortcut_summary
from fslib.protocols import Variant, VariantAnalysis


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_iou_matrix_is_symmetric_with_unit_diagonal():
    g = torch.Generator().manual_seed(0)
    maps = {k: torch.rand(3, 8, 8, generator=g) < 0.2 for k in ("a", "b", "c")}
    m = iou_matrix(maps)
    assert (pd.Series([m.loc[k, k] for k in maps]) == 1.0).all()
    assert m.equals(m.T.rename_axis(index="model", columns="model"))
    assert math.isclose(m.loc["a", "b"], dfm.iou(maps["a"], maps["b"]).mean().item())


def test_cross_model_table_diagonal_is_each_models_own_test(cache):
    images, labels = uint8_set(seed=5)
    runs = {"p": probe_subject("p"), "q": probe_subject("q")}
    shifted = torch.roll(planted_dfms(), 1, dims=0)  # q's "DFMs" belong to the wrong classes
    config = dfm.DFMConfig(n_boot=0, n_null=0)
    table = cross_model_table(runs, {"p": planted_dfms(), "q": shifted}, images, labels, class_names=list("wxyz"),
                              config=config, device="cpu", progress=False)
    kw = dict(n_boot=0, n_null=0, device="cpu", progress=False)
    assert len(table) == 2 * 2 * 4 and list(table["name"][:4]) == list("wxyz")
    own = dfm.evaluate_dfms(runs["p"].model, runs["p"].normalize(images), labels, planted_dfms(), **kw)
    block = table[(table.dfm_source == "p") & (table.model == "p")].reset_index(drop=True)
    assert block["tpr"].tolist() == own["tpr"].tolist()
    summary = shortcut_summary(table, accuracy={"p": 0.9, "q": 0.8})
    assert summary.loc[("p", "q"), "mean_tpr"] == 1.0  # the probe reads exactly the planted pairs
    assert summary.loc[("q", "p"), "mean_tpr"] < 1.0
    assert summary.loc[("q", "q"), "test_acc"] == 0.8
    assert len(list(cache.rglob("*-test-*.csv"))) == 4  # every block is cached


def test_runs_table_costs_and_accuracy_bar():
    cfg = SimpleNamespace(model="resnet18", width=0.5, extra_augment="ampswap", epochs=3)
    run = SimpleNamespace(config=cfg, metrics={"test_acc": 0.8, "parameters": 10, "train_seconds": 120.0, "epochs": 3})
    weak = SimpleNamespace(config=cfg, metrics={"test_acc": 0.7, "parameters": 10, "train_seconds": 60.0, "epochs": 2})
    t = runs_table({"r": run, "w": weak}, min_acc=0.75)
    assert t.loc["r", "train_minutes"] == 2.0 and t.loc["r", "extra_augment"] == "ampswap"
    assert math.isclose(t.loc["r", "minutes_per_epoch"], 2 / 3) and t.loc["w", "minutes_per_epoch"] == 0.5
    assert t["meets_min_acc"].tolist() == [True, False]
    assert "meets_min_acc" not in runs_table({"r": run}).columns


def test_model_label_names_pairs_and_keeps_unknown_names():
    assert model_label("resnet18") == "ResNet18"
    assert model_label("resnet18", "ampswap") == "ResNet18 + amplitude swap"
    assert model_label("resnet50", "autoaugment") == "ResNet50 + AutoAugment"
    assert model_label("newnet", "newaug") == "newnet + newaug"


def _analysis(name, tpr, fpr, shortcut):
    table = pd.DataFrame({"tpr": tpr, "fpr": fpr, "shortcut": shortcut})
    empty = torch.empty(0, dtype=torch.long)
    return VariantAnalysis(Variant(name), empty, empty, torch.zeros(len(tpr), 2, 2, dtype=torch.bool), table)


def test_protocol_table_reads_claims_3_and_5_with_the_rules_of_report():
    strong = _analysis("book", [0.9, 0.2], [0.05, 0.1], [True, False])        # one strong class
    weak = _analysis("book", [0.5, 0.2], [0.05, 0.1], [True, False])          # beats the null, not strong
    none = _analysis("book", [0.1, 0.2], [0.05, 0.1], [False, False])
    table = protocol_table({"base": {"book": strong}, "big": {"book": weak}, "aug": {"book": none}}, "base")
    row = table.loc["book (default)"]
    assert row["base"] == "holds (1 / 1)" and row["big"] == "partly (1 / 0)" and row["aug"] == "does not hold (0 / 0)"
    assert row["claim 5"] == report.robustness_verdict({"base": 1, "big": 1, "aug": 0}, "base") == "partly"
    assert row["claim 5, strong shortcuts only"] == "does not hold"
    with pytest.raises(ValueError, match="baseline 'x' is not among"):
        protocol_table({"base": {"book": strong}}, "x")
    with pytest.raises(ValueError, match="same variants"):
        protocol_table({"base": {"book": strong}, "big": {"other": weak}}, "base")
