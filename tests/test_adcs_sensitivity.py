"""fslib.adcs_sensitivity: settings change what they say, one row per setting, the default row is
the chapter's own verdict, bad names are clear errors."""

import pandas as pd
import pytest
import torch

from fslib import adcs_sensitivity as adcs_s
from fslib import metrics, report, synthetic
from fslib.adcs_sensitivity import Setup
from fslib.constants import normalization

SETS = list(synthetic.DATASETS)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path))


def test_every_registered_setting_changes_only_what_it_names():
    base = Setup()
    for name, overrides in adcs_s.SETTINGS.items():
        s = adcs_s.setting(name, base)
        values = {**{k: v for k, v in vars(s).items() if k != "generator"}, **dict(s.generator)}
        assert {k: values[k] for k in overrides} == overrides, name
        changed = {k for k in vars(s) if k != "generator" and getattr(s, k) != getattr(base, k)}
        changed |= {k for k, _ in s.generator}
        assert changed <= set(overrides), name


def test_combined_settings_merge_and_clashes_are_errors():
    s = adcs_s.setting("official+normalized+noise_0")
    assert (s.variant, s.normalize, dict(s.generator)) == ("official", True, {"noise_std": 0.0})
    with pytest.raises(ValueError, match="twice"):
        adcs_s.setting("official+paper")


@pytest.mark.parametrize("bad,match", [
    ("nope", "unknown ADCS setting 'nope'.*valid: default, top_band_share"),
    ("official+nope", "unknown ADCS setting 'nope' in 'official\\+nope'"),
])
def test_unknown_setting_names_are_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        adcs_s.setting(bad)


@pytest.mark.parametrize("kwargs,match", [
    ({"statistic": "bottom_fraction"}, "unknown statistic 'bottom_fraction'; valid: top_fraction"),
    ({"variant": "grey"}, "unknown variant 'grey'; valid: paper, official"),
    ({"split": "val"}, "unknown split 'val'"),
    ({"n": 0}, "unknown n 0"),
    ({"seed": -1}, "unknown seed -1"),
    ({"generator": {"size": 64}}, "unknown generator fields \\['size'\\]"),
    ({"generator": {"noise_std": -0.1}}, r"synthetic option noise_std=-0.1 is out of range; valid: a number in \[0, 0.25\]"),
    ({"generator": {"contrast": (0.3, 0.1)}}, r"synthetic option contrast=\(0.3, 0.1\) is out of range"),
    ({"generator": {"c2_special_fraction": 1.0}}, "synthetic option c2_special_fraction=1.0 is out of range"),
])
def test_bad_setups_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Setup(**kwargs)


def test_settings_rejects_empty_and_repeated_lists():
    with pytest.raises(ValueError, match="at least one"):
        adcs_s.settings([])
    with pytest.raises(ValueError, match="unique"):
        adcs_s.settings(["n1000", "n1000"])


@pytest.mark.parametrize("name", ["noise_0.02", "c2_special_0.7", "c0_lines_1.0", "contrast_high", "seed1", "test"])
def test_a_data_setting_changes_the_generated_images(name):
    base = Setup(n=16)
    s = adcs_s.setting(name, base)
    a = synthetic.load_labeled("syn_b2", base.split, base.n, base.seed, config=base.config())
    b = synthetic.load_labeled("syn_b2", s.split, s.n, s.seed, config=s.config())
    assert not torch.equal(a.images, b.images)


def test_only_data_settings_compute_new_maps():
    base = Setup()
    same = {adcs_s.setting(n, base).maps_key() for n in ("default", "top_band_share", "mean_adcs")}
    other = {adcs_s.setting(n, base).maps_key() for n in ("official", "normalized", "noise_0", "n1000", "seed1")}
    assert len(same) == 1 and len(other) == 5 and not same & other


def chapter_verdict(split, n, variant, normalize):
    """Chapter 3's headline, computed its own way: rank 1 by top_fraction, counted by report."""
    ranks = []
    for name in SETS:
        d = synthetic.load_labeled(name, split, n)
        stats = normalization(name) if normalize else None
        a = metrics.adcs(d.images, d.labels, 4, variant, normalize=stats, device="cpu")
        t = metrics.adcs_distinctiveness(a, synthetic.CLASSES, variant)
        ranks.append(int(t.loc[t["class"] == "C3", "rank"].iloc[0]))
    return report.count_verdict(sum(r == 1 for r in ranks), len(ranks)), ranks


@pytest.mark.parametrize("variant,normalize", [("paper", False), ("official", True)])
def test_the_default_row_is_the_chapters_headline_verdict(variant, normalize, one_thread):
    base = Setup(n=128, variant=variant, normalize=normalize)
    table = adcs_s.verdict_table(["top_band_share", "seed1"], SETS, base, device="cpu")
    expected, ranks = chapter_verdict("train", 128, variant, normalize)
    assert list(table.index) == ["default", "top_band_share", "seed1"]  # one row per setting, default first
    assert table.loc["default", "verdict"] == expected
    assert table.loc["default", "target_rank"] == ranks
    assert table.loc["default", "changes"] == "-" and table.loc["seed1", "changes"] == "seed = 1 (was 0)"
    assert table.loc["default", "setup"] == base and table.loc["seed1", "setup"] == adcs_s.setting("seed1", base)


def test_the_statistic_decides_who_ranks_first_on_a_planted_map():
    # C1 owns most positions, C3 owns one band and nothing else: top_fraction ranks C1 first,
    # top_band_share C3.
    h = 32
    band = torch.zeros(h, h, dtype=torch.bool)
    band[14:18, 14:18] = True
    a = torch.full((4, h, h), -1, dtype=torch.int64)
    a[1][~band], a[3][band] = 3, 3
    a[3][~band], a[1][band] = -3, -3
    maps = {(Setup().maps_key(), "syn_b1"): a}
    first = {s: adcs_s.measure(Setup(statistic=s), ["syn_b1"], maps=maps).iloc[0] for s in adcs_s.STATISTICS}
    assert first["top_fraction"]["first"] == "C1" and first["top_fraction"]["target_rank"] == 2
    assert first["top_band_share"]["first"] == "C3" and first["top_band_share"]["target_value"] == 1.0


def test_cells_mark_the_default_and_summary_names_each_verdict():
    table = pd.DataFrame({"changes": ["-", "x", "y"], "verdict": ["partly", "holds", "does not hold"],
                          "n_first": [1, 4, 0], "total": [4, 4, 4], "target_rank": [[2, 1], [1, 1], [3, 2]],
                          "first": [["C1", "C3"]] * 3, "target_value": [[0.1, 0.5]] * 3,
                          "first_value": [[0.9, 0.5]] * 3, "tied": [False, True, False]},
                         index=pd.Index(["default", "a", "b"], name="setting"))
    cells = adcs_s.verdict_cells(table)
    assert list(cells.index) == ["default (default)", "a", "b"]
    assert cells.loc["a", "verdict"] == "holds (4/4)" and cells.loc["a", "C3 rank"] == "1, 1 (a tie)"
    assert adcs_s.summary(table) == "holds under a; partly under default; does not hold under b"
    assert adcs_s.summary(table.iloc[:1]) == "holds under no setting; partly under default"
    with pytest.raises(ValueError, match="default setting 'base'"):
        adcs_s.verdict_cells(table, default="base")


def test_what_decides_counts_verdict_changes_by_kind_of_setting():
    t = pd.DataFrame({"kind": ["none", "statistic", "maps", "maps", "statistic+maps"],
                      "verdict": ["partly", "partly", "holds", "partly", "holds"]},
                     index=["default", "s", "m1", "m2", "both"])
    text = adcs_s.what_decides(t)
    assert text == ("the statistic leaves it unchanged (0 of 1 settings); "
                    "the data and preprocessing change the verdict (1 of 2 settings: m1)")
    assert adcs_s.what_decides(t.loc[["default", "s"]]).endswith("the data and preprocessing were not varied")
    with pytest.raises(ValueError, match="'default' row"):
        adcs_s.what_decides(t.drop(index="default"))


def test_kind_says_whether_a_setting_changes_the_statistic_the_maps_or_nothing(one_thread):
    a = torch.zeros(4, 32, 32, dtype=torch.int64)
    a[3, 16, 16] = 3
    base = Setup(n=8)
    maps = {}
    for name in ("default", "mean_adcs", "official", "mean_adcs+official"):
        maps[(adcs_s.setting(name, base).maps_key(), "syn_b1")] = a

    def no_loader(*args, **kwargs):
        raise AssertionError("maps were given: nothing is loaded")

    table = adcs_s.verdict_table(["mean_adcs", "official", "mean_adcs+official", "default"], ["syn_b1"], base,
                                 loader=no_loader, maps=maps)
    assert table["kind"].to_dict() == {"default": "none", "mean_adcs": "statistic", "official": "maps",
                                       "mean_adcs+official": "statistic+maps"}


def test_the_default_loader_caches_only_the_books_generator(tmp_path, monkeypatch):
    from fslib import adcs_sensitivity, synthetic
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path))
    other = synthetic.SyntheticConfig(noise_std=0.02)
    a = adcs_sensitivity.load_images("syn_b1", "test", 16, 0, config=other)
    assert not list(tmp_path.rglob("*.npz"))  # another generator setting: generated, not cached
    assert torch.equal(a.images, synthetic.generate("syn_b1", "test", 16, 0, config=other).images)
    b = adcs_sensitivity.load_images("syn_b1", "test", 16, 0, config=synthetic.SyntheticConfig())
    assert len(list(tmp_path.rglob("*.npz"))) == 1 and not torch.equal(a.images, b.images)
