"""fslib.sensitivity: settings, the grid of runs, one row per run, verdicts by report.count_verdict."""

import numpy as np
import pandas as pd
import pytest

from fslib import dynamics, recipes, report, sensitivity, train
from fslib.sensitivity import Setting


def test_registered_settings_build_valid_configs_that_differ_only_where_they_say():
    base = recipes.synthetic("syn_b4", seed=1)
    for name, overrides in sensitivity.SETTINGS.items():
        cfg = sensitivity.setting(name).config(base)
        assert {k: getattr(cfg, k) for k in overrides} == overrides
        changed = {f for f in train.TrainConfig.__dataclass_fields__ if getattr(cfg, f) != getattr(base, f)}
        assert changed <= set(overrides), name


def test_common_overrides_apply_first_and_the_setting_wins():
    base = recipes.synthetic("syn_b1")
    fine = sensitivity.fine_tracking(every=2, until=150)
    cfg = sensitivity.setting("none").config(base, fine)
    assert (cfg.augment, cfg.track_every, cfg.track_until, cfg.max_iters, cfg.track_sets) == ("none", 2, 150, 150, ("test",))
    own = Setting("short", {"max_iters": 40}).config(base, fine)
    assert own.max_iters == 40 and own.track_every == 2


def test_combined_settings_merge_and_clashes_are_errors():
    s = sensitivity.setting("none+alexnet")
    assert dict(s.overrides) == {"augment": "none", "model": "alexnet", "width": 1.0}
    with pytest.raises(ValueError, match="twice"):
        sensitivity.setting("none+flipcrop")


def test_generator_settings_resolve_to_dataset_options_and_merge_field_by_field():
    base = recipes.synthetic("syn_b4", seed=1)
    for name in ("c2_share_low", "c2_share_high", "c0_lines_low", "noise_high"):
        cfg = sensitivity.setting(name).config(base, sensitivity.fine_tracking())
        assert len(cfg.dataset_options) == 1 and cfg.augment == base.augment and cfg.track_every == 2
        assert cfg.dataset_options == sensitivity.SETTINGS[name]["dataset_options"]
    both = sensitivity.setting("c2_share_high+noise_high+none")
    assert dict(both.overrides) == {"augment": "none",
                                    "dataset_options": (("c2_special_fraction", 0.7), ("noise_std", 0.02))}
    assert both.config(base).dataset_options == (("c2_special_fraction", 0.7), ("noise_std", 0.02))
    with pytest.raises(ValueError, match=r"sets \['dataset_options.c2_special_fraction'\] twice"):
        sensitivity.setting("c2_share_high+c2_share_low")
    with pytest.raises(ValueError, match="setting 'noise_high': 'cifar10' takes no options"):
        sensitivity.setting("noise_high").config(recipes.cifar10())
    table = sensitivity.generator_table(["noise_high", "none", "c2_share_high+c0_lines_low"])
    assert table.values.tolist() == [["noise_high", "noise_std", 0.02, 0.005],
                                     ["c2_share_high+c0_lines_low", "c0_line_fraction", 0.5, 0.75],
                                     ["c2_share_high+c0_lines_low", "c2_special_fraction", 0.7, 0.4]]


@pytest.mark.parametrize("bad,match", [("nope", "unknown setting 'nope'.*valid: official"),
                                       ("none+nope", "unknown setting 'nope'")])
def test_unknown_setting_names_are_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        sensitivity.setting(bad)


def test_bad_overrides_are_clear_errors():
    with pytest.raises(ValueError, match="unknown TrainConfig fields \\['augmnet'\\]"):
        Setting("typo", {"augmnet": "none"})
    with pytest.raises(ValueError, match="setting 'odd': unknown augment 'sometimes'"):
        Setting("odd", {"augment": "sometimes"}).config(recipes.synthetic("syn_b1"))
    with pytest.raises(ValueError, match="unique"):
        sensitivity.settings(["none", "none"])
    with pytest.raises(ValueError, match="at least one"):
        sensitivity.settings([])
    with pytest.raises(ValueError, match="every"):
        sensitivity.fine_tracking(every=0)


def random_table(seed, settings=("a", "b", "c"), datasets=("syn_b1", "syn_b4"), seeds=(0, 1, 2)):
    g = np.random.default_rng(seed)
    rows = [dict(setting=s, dataset=d, seed=k, c3_first=bool(g.random() < 0.5),
                 c2_retention=float(g.uniform(0.6, 1.05)), others_retention=float(g.uniform(0.5, 1)))
            for s in settings for d in datasets for k in seeds]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", range(5))
def test_verdicts_follow_count_verdict_on_random_tables(seed):
    table = random_table(seed)
    v = sensitivity.claim_verdicts(table, high="syn_b4", keep=0.9)
    assert list(v.index) == ["a", "b", "c"]
    for name, g in table.groupby("setting"):
        n1a = int(g["c3_first"].sum())
        n1b = int(g.loc[g["dataset"] == "syn_b4", "c3_first"].sum())
        n1c = int((g.groupby("dataset")["c2_retention"].mean() >= 0.9).sum())
        assert (v.loc[name, "1a_n"], v.loc[name, "1a_total"]) == (n1a, len(g))
        assert (v.loc[name, "1b_n"], v.loc[name, "1b_total"]) == (n1b, 3)
        assert (v.loc[name, "1c_n"], v.loc[name, "1c_total"]) == (n1c, 2)
        assert v.loc[name, "1a"] == report.count_verdict(n1a, len(g))
        assert v.loc[name, "1b"] == report.count_verdict(n1b, 3)
        assert v.loc[name, "1c"] == report.count_verdict(n1c, 2)


def test_verdicts_extremes_and_a_missing_high_set():
    table = random_table(0).assign(c3_first=True, c2_retention=0.95)
    v = sensitivity.claim_verdicts(table)
    assert (v[["1a", "1b", "1c"]] == "holds").all().all()
    v = sensitivity.claim_verdicts(table.assign(c3_first=False, c2_retention=0.5))
    assert (v[["1a", "1b", "1c"]] == "does not hold").all().all()
    v = sensitivity.claim_verdicts(table[table["dataset"] == "syn_b1"])
    assert (v["1b"] == report.NOT_JUDGED).all() and (v["1b_total"] == 0).all()
    with pytest.raises(ValueError, match="keep"):
        sensitivity.claim_verdicts(table, keep=1.5)
    with pytest.raises(ValueError, match="missing columns \\['c3_first'\\]"):
        sensitivity.claim_verdicts(table.drop(columns="c3_first"))


def test_cells_mark_the_default_and_summary_names_every_setting():
    v = sensitivity.claim_verdicts(random_table(3))
    cells = sensitivity.verdict_cells(v, default="b")
    assert list(cells.index) == ["a", "b (default)", "c"]
    assert cells.loc["a", "1a"] == f"{v.loc['a', '1a']} ({v.loc['a', '1a_n']}/6)"
    with pytest.raises(ValueError, match="default setting 'z'"):
        sensitivity.verdict_cells(v, default="z")
    v = sensitivity.claim_verdicts(random_table(3, settings=("s_one", "s_two", "s_three")))
    text = sensitivity.summary(v, "1c")
    assert all(f"{verdict} under" in text for verdict in set(v["1c"])) and text.startswith("holds under")
    for name in v.index:  # every setting is named once, after its own verdict
        before = text[:text.index(name)]
        assert text.count(name) == 1 and before[before.rfind(";") + 1:].strip().startswith(v.loc[name, "1c"])
    with pytest.raises(ValueError, match="unknown claim"):
        sensitivity.summary(v, "2")


# --------------------------------------------------------------------------- tiny real runs
def tiny_recipe(dataset, seed=0, scale="smoke"):
    return train.TrainConfig(dataset=dataset, model="resnet18", width=0.0625, epochs=1, max_iters=8, batch_size=16,
                             n_train=128, n_test=32, scheduler="onecycle", lr=0.05, seed=seed,
                             track_every=4, track_until=8, track_sets=("test", "bandstop:1,2"))


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("FSLIB_CACHE", str(tmp_path_factory.mktemp("cache")))
    try:
        kw = dict(common=sensitivity.fine_tracking(every=2, until=6), recipe=tiny_recipe, device="cpu", progress=False)
        grid = sensitivity.train_grid(["none", "flipcrop"], ["syn_b4"], [0, 1], **kw)
        again = sensitivity.train_grid(["flipcrop"], ["syn_b4"], [1], **kw)
        yield grid, again
    finally:
        mp.undo()


@pytest.mark.slow
def test_grid_has_one_run_per_cell_with_the_settings_config(tiny_grid):
    grid, again = tiny_grid
    assert list(grid) == [("none", "syn_b4", 0), ("none", "syn_b4", 1), ("flipcrop", "syn_b4", 0),
                          ("flipcrop", "syn_b4", 1)]
    assert len({r.path for r in grid.values()}) == 4
    for (name, _, seed), run in grid.items():
        assert (run.config.augment, run.config.seed, run.config.max_iters, run.config.track_sets) == (name, seed, 6, ("test",))
    assert again[("flipcrop", "syn_b4", 1)].path == grid[("flipcrop", "syn_b4", 1)].path  # from the cache


@pytest.mark.slow
def test_run_table_has_one_row_per_run_measured_with_the_chapter_definitions(tiny_grid):
    grid, _ = tiny_grid
    table = sensitivity.run_table(grid, threshold=0.5, n_bandstop=32)
    assert len(table) == len(grid) and list(table[["setting", "seed"]].itertuples(index=False, name=None)) == \
        [(s, k) for s, _, k in grid]
    for row, run in zip(table.itertuples(), grid.values()):
        first = dynamics.learned_at(run.tracking, 0.5, until=6).set_index("class")["iteration"]
        assert row.c3_first == bool(pd.notna(first[3]) and first[3] == first.min())
        stop = dynamics.bandstop_test(run, n=32)
        ratio = stop["acc_bandstop"] / np.where(stop["acc_original"] > 0, stop["acc_original"], np.nan)
        assert row.c2_retention == pytest.approx(np.nanmean(ratio[:, 2]), nan_ok=True)
        assert row.iterations == 6
    v = sensitivity.claim_verdicts(table)
    assert list(v.index) == ["none", "flipcrop"] and (v["runs"] == 2).all()
    given = {key: dynamics.bandstop_test(run, n=16) for key, run in grid.items()}  # precomputed results are used
    reused = sensitivity.run_table(grid, bandstop=given, threshold=0.5, n_bandstop=32)
    for (key, r), c2 in zip(given.items(), reused["c2_retention"]):
        ratio = r["acc_bandstop"][:, 2] / r["acc_original"][2] if r["acc_original"][2] > 0 else np.nan
        assert c2 == pytest.approx(np.mean(ratio), nan_ok=True), key
