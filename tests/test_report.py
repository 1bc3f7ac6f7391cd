import pandas as pd
import pytest

from fslib import report
from fslib.report import (
    VERDICTS,
    count_verdict,
    describe_recipe,
    differences,
    robustness_verdict,
    shortcut_verdict,
    transfer_verdict,
)
from fslib.train import TrainConfig


def test_count_verdict_all_some_none_and_bad_counts():
    assert [count_verdict(n, 4) for n in (4, 3, 1, 0)] == ["holds", "partly", "partly", "does not hold"]
    assert set(count_verdict(n, 2) for n in range(3)) == set(VERDICTS)
    for n, total in ((3, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="0 <= n <= total"):
            count_verdict(n, total)


def test_robustness_verdict_counts_the_other_models():
    assert robustness_verdict({"b": 0, "x": 2, "y": 1}, "b") == "holds"
    assert robustness_verdict({"b": 5, "x": 0, "y": 0}, "b") == "does not hold"
    assert robustness_verdict({"b": 5, "x": 0, "y": 1}, "b") == "partly"
    with pytest.raises(ValueError, match="baseline"):
        robustness_verdict({"x": 1}, "b")
    with pytest.raises(ValueError, match="besides the baseline"):
        robustness_verdict({"b": 1}, "b")


def test_shortcut_verdict_needs_the_null_the_tpr_and_a_low_fpr():
    t = pd.DataFrame({"tpr": [0.9, 0.7, 0.65], "fpr": [0.05, 0.3, 0.02], "shortcut": [True, True, False]})
    verdict, strong = shortcut_verdict(t)
    assert verdict == "holds" and strong.tolist() == [True, False, False]
    assert shortcut_verdict(t, paper_tpr=0.95)[0] == "partly"
    assert shortcut_verdict(t.assign(shortcut=False))[0] == "does not hold"


def test_transfer_verdict_rule():
    assert transfer_verdict([True, False, False], [0.9, 0.2, 0.4]) == "holds"
    assert transfer_verdict([True, False, False], [0.1, 0.8, 0.4]) == "partly"
    assert transfer_verdict([False, False], [0.9, 0.9]) == "does not hold"
    assert transfer_verdict([True, True], [0.1, 0.1]) == "holds"
    with pytest.raises(ValueError, match="one OOD accuracy per class"):
        transfer_verdict([True], [0.1, 0.2])


def test_describe_recipe_lists_exactly_the_fields_that_differ_from_the_paper():
    assert describe_recipe(TrainConfig(dataset="cifar10", model="resnet18")) == "as the paper"
    paper = TrainConfig(dataset="cifar10", model="vgg16")
    text = describe_recipe(TrainConfig(dataset="cifar10", model="vgg16", width=0.25, epochs=8))
    assert text == f"width 0.25 (paper {paper.width}); epochs 8 (paper {paper.epochs})"
    tracked = TrainConfig(dataset="cifar10", model="resnet18", epochs=3, track_every=5, track_until=10, track_sets=("test",))
    assert describe_recipe(tracked) == f"epochs 3 (paper {paper.epochs})"
    assert describe_recipe(TrainConfig(dataset="cifar10", model="resnet18", n_train=100)) == "n_train 100 (paper unset)"


def test_differences_rows_carry_prefix_and_why_and_can_keep_tracking():
    cfg = TrainConfig(epochs=3, track_every=5, track_until=10, track_sets=("test",))
    rows = differences(cfg, prefix="CIFAR-10 training: ", why="budget")
    assert rows.columns.tolist() == ["setting", "ours", "paper", "why"]
    assert rows.values.tolist() == [["CIFAR-10 training: epochs", "3", "200", "budget"]]
    assert len(differences(cfg, skip=())) == 4


@pytest.mark.parametrize("rows,verdict,strong", [
    ([(0.9, 0.05, True), (0.7, 0.3, True)], "holds", [True, False]),
    ([(0.5, 0.05, True), (0.9, 0.0, False)], "partly", [False, False]),
    ([(0.95, 0.0, False), (0.1, 0.0, False)], "does not hold", [False, False]),
    ([(0.6, 0.1, True)], "holds", [True]),  # both bounds inclusive
])
def test_shortcut_verdict_rules(rows, verdict, strong):
    t = pd.DataFrame(rows, columns=["tpr", "fpr", "shortcut"])
    got, flags = shortcut_verdict(t)
    assert got == verdict and flags.tolist() == strong
    assert shortcut_verdict(t, max_fpr=1.0)[1].tolist() == [r[2] and r[0] >= 0.6 for r in rows]


def test_localization_verdicts_follow_their_rules():
    spread = report.spread_verdict
    assert spread(pd.Series({"stem": 0.3, "layer1": 0.25, "head": 0.0})) == "holds"          # two sizeable blocks
    assert spread(pd.Series({"stem": 0.8, "layer1": 0.1, "head": 0.05})) == "does not hold"  # one block carries it
    assert spread(pd.Series({"stem": 0.5, "layer1": 0.1})) == "partly"                       # one, but not dominant
    assert spread(pd.Series({"stem": 0.05, "layer1": 0.1, "head": float("nan")})) == "partly"  # none alone
    shallow = ["stem", "layer1"]
    enc = pd.Series({"stem": 0.5, "layer1": 0.2, "layer4": 0.2, "head": -0.3, "all": 0.9})
    rep = pd.Series({"stem": 0.1, "layer1": 0.1, "layer4": 0.5, "head": 0.3})
    assert report.shallow_fraction(enc, shallow) == pytest.approx(0.7 / 0.9)  # negatives and "all" left out
    assert report.roles_verdict(enc, rep, shallow) == "holds"
    assert report.roles_verdict(enc, enc, shallow) == "partly"       # forgetting sits shallow too
    assert report.roles_verdict(rep, enc, shallow) == "does not hold"
    # the second costs clean accuracy
    assert report.layerwise_mitigation_verdict([0.05, 0.05, 0.0], [0.0, -0.05, 0.0]) == "partly"
    with pytest.raises(ValueError, match="one clean gain"):
        report.layerwise_mitigation_verdict([0.1], [])
def test_a_verdict_whose_precondition_failed_is_not_stated():
    assert report.gated_verdict("holds", True, "test accuracy >= 80%") == "holds"
    text = report.gated_verdict("holds", False, "test accuracy >= 80%")
    assert text.startswith(report.NOT_JUDGED) and "precondition failed" in text and "80%" in text
    assert not any(text == v for v in report.VERDICTS)
    with pytest.raises(ValueError, match="unknown verdict"):
        report.gated_verdict("maybe", True, "x")


def test_markdown_table_keeps_every_cell_whole():
    why = "CPU budget: cost grows with the pixel count squared, and much more than fifty characters"
    table = pd.DataFrame({"setting": ["a|b", "c"], "ours": [1, "x\ny"], "why": [why, "short"]})
    lines = report.markdown_table(table).splitlines()
    assert lines[0] == "| setting | ours | why |" and lines[1] == "|---|---|---|"
    assert lines[2] == f"| a\\|b | 1 | {why} |" and lines[3] == "| c | x y | short |"
    assert "..." not in "".join(lines)


def test_stability_verdict_reads_the_low_end_and_names_bad_values():
    assert report.stability_verdict(0.5) == "stable" and report.stability_verdict(0.499) == "not stable"
    assert report.stability_verdict(0.7, min_iou=0.8) == "not stable"
    with pytest.raises(ValueError, match="iou_low=1.5"):
        report.stability_verdict(1.5)
    with pytest.raises(ValueError, match="min_iou=0"):
        report.stability_verdict(0.5, min_iou=0)


def test_settings_summary_and_glance_name_the_settings_of_each_verdict():
    from fslib.report import settings_glance, settings_summary
    v = {"a": "holds", "b": "partly", "c": "not judged: its precondition failed (x)", "d": "holds"}
    assert settings_summary(v) == "holds under a and d; partly under b; not judged under c"
    assert settings_glance(v) == "holds under 2 of 4 settings (a, d)"
    assert settings_summary({"a": "does not hold"}) == "holds under no setting; does not hold under a"
    with pytest.raises(ValueError, match="at least one setting"):
        settings_glance({})


def test_within_verdict_is_the_limit_inclusive_and_nan_fails():
    assert report.within_verdict(600.0, 600.0) == "holds"
    assert report.within_verdict(600.1, 600.0) == "does not hold"
    assert report.within_verdict(float("nan"), 600.0) == "does not hold"
