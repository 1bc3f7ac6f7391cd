"""fslib.dynamics: the "learned first" definition, its summaries, and band-stop tests."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from fslib import dynamics, train
from fslib.inference import confusion_matrix
from fslib.spectral import BAND_PAIRS


def curves(acc, fpr=None, every=5, **keys):
    """Tracking rows of one or more classes: ``acc[c]`` is the accuracy curve of class c."""
    rows = []
    for c, a in enumerate(acc):
        f = np.zeros(len(a)) if fpr is None else fpr[c]
        rows += [dict(keys, iteration=i * every, set="test", **{"class": c}, accuracy=float(a[i]), fpr=float(f[i]))
                 for i in range(len(a))]
    return pd.DataFrame(rows)


def random_tracking(seed, n_seeds=3, n_classes=4, n_points=12):
    g = np.random.default_rng(seed)
    frames = []
    for s in range(n_seeds):
        acc = np.clip(np.cumsum(g.uniform(-0.15, 0.3, (n_classes, n_points)), axis=1), 0, 1)
        fpr = g.uniform(0, 0.25, (n_classes, n_points))
        frames.append(curves(acc, fpr, seed=s, dataset="syn_b1"))
    return pd.concat(frames, ignore_index=True)


def brute_force(tracking, threshold, tolerance, max_fpr, hold=None):
    """Direct transcription of the definition, one curve at a time."""
    out = {}
    for (d, s, c), g in tracking.groupby(["dataset", "seed", "class"]):
        g = g.sort_values("iteration")
        acc, fpr, it = g["accuracy"].to_numpy(), g["fpr"].to_numpy(), g["iteration"].to_numpy()
        hit = math.nan
        for t in range(len(acc)):
            ok = acc[t] >= threshold and (max_fpr is None or fpr[t] <= max_fpr)
            if tolerance is not None:
                ok = ok and all(acc[u] >= threshold - tolerance for u in range(t, len(acc))
                                if hold is None or it[u] <= it[t] + hold)
            if ok:
                hit = float(it[t])
                break
        out[(d, s, c)] = hit
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tolerance,max_fpr,hold", [(0.1, 0.1, None), (0.0, None, None), (None, 0.1, None),
                                                    (0.3, 0.05, None), (0.1, 0.1, 10), (0.2, None, 0), (0.1, 0.1, 12)])
def test_learned_at_matches_the_definition_on_random_curves(seed, tolerance, max_fpr, hold):
    tracking = random_tracking(seed)
    got = dynamics.learned_at(tracking, 0.7, tolerance=tolerance, max_fpr=max_fpr, hold=hold)
    want = brute_force(tracking, 0.7, tolerance, max_fpr, hold)
    assert len(got) == len(want)
    for row in got.itertuples():
        w = want[(row.dataset, row.seed, row._3)]
        assert (math.isnan(w) and math.isnan(row.iteration)) or w == row.iteration


def _first_touch(tracking, threshold, max_fpr):
    """The slow direct definition without persistence: first recorded iteration with
    accuracy >= threshold and fpr <= max_fpr, per (seed, class); NaN if never."""
    out = []
    for (seed, c), g in tracking.groupby(["seed", "class"]):
        g = g.sort_values("iteration")
        ok = g[(g["accuracy"] >= threshold) & (g["fpr"] <= max_fpr)]
        out.append((seed, c, float(ok["iteration"].iloc[0]) if len(ok) else math.nan))
    return pd.DataFrame(out, columns=["seed", "class", "iteration"])


@pytest.mark.parametrize("seed", range(3))
def test_without_persistence_it_is_the_first_touch_with_few_false_positives(seed):
    tracking = random_tracking(seed).drop(columns="dataset")
    ours = dynamics.learned_at(tracking, 0.6, tolerance=None, max_fpr=0.1)
    theirs = _first_touch(tracking, 0.6, 0.1)
    pd.testing.assert_frame_equal(ours.sort_values(["seed", "class"]).reset_index(drop=True)[list(theirs.columns)],
                                  theirs.sort_values(["seed", "class"]).reset_index(drop=True), check_dtype=False)


def test_a_transient_spike_or_a_predict_everything_phase_does_not_count():
    acc = [[0.0, 0.95, 0.5, 0.95, 0.9],   # spike at 5, falls to 0.5: learned at 15
           [1.0, 1.0, 0.95, 0.95, 0.95],  # 100 % at 0 while predicted for everything
           [0.0, 0.2, 0.4, 0.6, 0.7]]     # never reaches 0.9
    fpr = [[0.0] * 5, [1.0, 0.5, 0.05, 0.0, 0.0], [0.0] * 5]
    first = dynamics.learned_at(curves(acc, fpr), 0.9)
    assert first["iteration"].tolist()[:2] == [15.0, 10.0] and math.isnan(first["iteration"][2])


def test_until_limits_the_window_and_the_persistence_check():
    acc = [[0.0, 0.95, 0.95, 0.3]]  # falls after the window ends
    assert dynamics.learned_at(curves(acc), 0.9, until=10)["iteration"].tolist() == [5.0]
    assert math.isnan(dynamics.learned_at(curves(acc), 0.9)["iteration"][0])
    assert math.isnan(dynamics.learned_at(curves(acc), 0.9, until=0)["iteration"][0])


def test_learned_at_rejects_bad_input():
    t = curves([[0.5, 1.0]])
    with pytest.raises(ValueError, match="sets present: \\['test'\\]"):
        dynamics.learned_at(t, set="bandstop:1,2")
    with pytest.raises(ValueError, match="threshold"):
        dynamics.learned_at(t, 1.5)
    with pytest.raises(ValueError, match="tolerance"):
        dynamics.learned_at(t, tolerance=-0.1)
    with pytest.raises(ValueError, match="hold"):
        dynamics.learned_at(t, hold=-5)


def test_a_longer_hold_never_learns_earlier():
    tracking = random_tracking(7)
    times = [dynamics.learned_at(tracking, 0.6, hold=h)["iteration"].fillna(np.inf).to_numpy() for h in (0, 10, 25, None)]
    assert all((b >= a).all() for a, b in zip(times, times[1:]))
    assert not all((b == a).all() for a, b in zip(times, times[1:]))  # the hold matters on these curves


@pytest.mark.parametrize("seed", range(3))
def test_a_higher_threshold_never_learns_earlier(seed):
    sweep = dynamics.threshold_sweep(random_tracking(seed).query("seed == 0"), [0.3, 0.5, 0.7, 0.9])
    values = sweep.to_numpy()  # rows: thresholds ascending (one dataset)
    filled = np.where(np.isnan(values), np.inf, values)
    assert (filled[1:] >= filled[:-1]).all()
    # once never learned, never learned at a higher threshold
    assert (np.diff(np.isnan(values).astype(int), axis=0) >= 0).all()


def test_rank_orders_and_stats_with_ties_and_never():
    first = pd.DataFrame({"dataset": "syn_b2", "seed": [0] * 4 + [1] * 4, "class": [0, 1, 2, 3] * 2,
                          "iteration": [20, np.nan, 10, 10, 30, 40, 25, 5]}).astype({"iteration": float})
    orders = dynamics.rank_orders(first)
    assert orders["order"].tolist() == ["C2 = C3 < C0 (never: C1)", "C3 < C2 < C0 < C1"]
    assert orders["first"].tolist() == ["C2 = C3", "C3"]
    stats = dynamics.learned_first_stats(first).set_index("class")
    assert stats.loc[3, "mean"] == 7.5 and stats.loc[3, "std"] == pytest.approx(np.std([10, 5], ddof=1))
    assert stats.loc[1, "n_learned"] == 1 and stats.loc[1, "n_seeds"] == 2 and math.isnan(stats.loc[1, "std"])
    assert stats["n_first"].tolist() == [0, 0, 1, 2]
    with pytest.raises(ValueError, match="seed"):
        dynamics.learned_first_stats(first.drop(columns="seed"))


def test_rank_orders_when_nothing_is_learned():
    first = pd.DataFrame({"seed": 0, "class": [0, 1], "iteration": [np.nan, np.nan]})
    assert dynamics.rank_orders(first, ["a", "b"]).iloc[0][["order", "first"]].tolist() == ["never: a, b", "-"]


def test_window_mean_accuracy_is_the_mean_over_the_window():
    t = curves([[0.0, 0.5, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    w = dynamics.window_mean_accuracy(t, until=10)
    assert w["accuracy"].tolist() == pytest.approx([0.5, 1 / 3])


def test_mean_std_cells():
    df = pd.DataFrame({"d": ["a", "a", "b"], "c": [0, 0, 0], "v": [1.0, 3.0, 2.0]})
    table = dynamics.mean_std(df, "d", "c", "v", "{:.1f}")
    assert table.loc["a", 0] == f"2.0 ± {np.std([1, 3], ddof=1):.1f}" and table.loc["b", 0] == "2.0"


# --------------------------------------------------------------------------- tiny real runs
def tiny_recipe(dataset, seed=0, scale="smoke"):
    return train.TrainConfig(dataset=dataset, model="resnet18", width=0.0625, epochs=1, max_iters=6, batch_size=16,
                             n_train=128, n_test=32, scheduler="onecycle", lr=0.05, augment="none", seed=seed,
                             track_every=3, track_until=6, track_sets=("test", "bandstop:1,2"))


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("FSLIB_CACHE", str(tmp_path_factory.mktemp("cache")))
    try:
        yield dynamics.train_all(["syn_b3"], [0, 1], device="cpu", progress=False, recipe=tiny_recipe)
    finally:
        mp.undo()


@pytest.mark.slow
def test_train_all_and_tracking_table(tiny_runs):
    assert list(tiny_runs) == [("syn_b3", 0), ("syn_b3", 1)]
    assert tiny_runs[("syn_b3", 1)].config == tiny_recipe("syn_b3", seed=1)
    t = dynamics.tracking_table(tiny_runs)
    assert list(t.columns) == ["dataset", "seed", "iteration", "set", "class", "accuracy", "fpr"]
    # 2 runs x 2 sets x 3 records (0, 3, 6) x 4 classes
    assert len(t) == 2 * 2 * 3 * 4 and sorted(t["iteration"].unique()) == [0, 3, 6]
    times = dynamics.wall_times(tiny_runs)
    assert (times["iterations"] == 6).all() and (times["train_seconds"] > 0).all()
    final = dynamics.final_accuracy_table(tiny_runs)
    assert len(final) == 8 and final["accuracy"].between(0, 1).all()
    with pytest.raises(ValueError, match="at least one"):
        dynamics.train_all([], [0], recipe=tiny_recipe)
    cost = dynamics.tracking_seconds(tiny_runs[("syn_b3", 0)])
    assert cost["records"] == 3 and cost["seconds_per_record"] > 0  # steps 0, 3, 6
    assert cost["tracking_seconds"] == pytest.approx(3 * cost["seconds_per_record"])


@pytest.mark.slow
def test_bandstop_test_is_consistent_with_the_run(tiny_runs):
    run = tiny_runs[("syn_b3", 0)]
    r = dynamics.bandstop_test(run)
    assert r["delta"].shape == (6, 4, 4) and r["acc_bandstop"].shape == (6, 4) and r["n"] == 32
    np.testing.assert_allclose(r["delta"].sum(axis=2), 0, atol=1e-9)  # every row of Delta sums to 0
    np.testing.assert_allclose(np.diagonal(r["delta"], axis1=1, axis2=2), (r["acc_bandstop"] - r["acc_original"]) * 100)
    np.testing.assert_allclose(r["acc_original"], run.metrics["per_class_acc"])  # same test images as the run
    # the last tracking record of "bandstop:1,2" is the final model on the same images
    last = run.tracking.query("set == 'bandstop:1,2' and iteration == 6").sort_values("class")["accuracy"]
    np.testing.assert_allclose(r["acc_bandstop"][0], last.to_numpy())
    with pytest.raises(ValueError, match="invalid band pairs"):
        dynamics.bandstop_test(run, [(2, 2)])


@pytest.mark.slow
def test_bandstop_tables_over_runs(tiny_runs):
    results = dynamics.bandstop_all(tiny_runs, progress=False)
    means = dynamics.mean_deltas(results)
    assert set(means) == {"syn_b3"}
    np.testing.assert_allclose(means["syn_b3"], (results[("syn_b3", 0)]["delta"] + results[("syn_b3", 1)]["delta"]) / 2)
    table = dynamics.bandstop_accuracy_table(results)
    assert len(table) == 2 * 7 * 4 and set(table["removed"]) == {"none"} | {f"bandstop:{j},{k}" for j, k in BAND_PAIRS}
    row = table.query("dataset == 'syn_b3' and seed == 0 and removed == 'bandstop:2,4'")
    want = results[("syn_b3", 0)]["acc_bandstop"][BAND_PAIRS.index((2, 4))]
    np.testing.assert_allclose(row.sort_values("class")["accuracy"], want)


class _RecordingRun:
    """A run whose model records the images it is asked about (and predicts class 0)."""

    def __init__(self, cfg):
        self.config, self.seen = cfg, []

    def predict(self, images, batch_size=None):
        self.seen.append(images.clone())
        return torch.zeros(len(images), 4)


def test_bandstop_test_of_a_run_uses_its_generator_options(tmp_path, monkeypatch):
    from fslib import data, synthetic

    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path))
    options = {"c2_special_fraction": 0.7, "noise_std": 0.02}
    seen = {}
    for key, opts in (("changed", options), ("default", {})):
        run = _RecordingRun(train.TrainConfig(dataset="syn_b1", n_test=16, dataset_options=opts))
        assert dynamics.bandstop_test(run, [(1, 2), (3, 4)])["n"] == 16
        seen[key] = run.seen
    config = synthetic.config_of(options)
    test = data.load("syn_b1", "test", n=16, options=options, progress=False)
    assert torch.equal(seen["changed"][0], test.images)  # the original images, then each band-stop version
    for pair, images in zip([(1, 2), (3, 4)], seen["changed"][1:]):
        assert torch.equal(images, synthetic.variant("syn_b1", "bandstop", pair, "test", 16, config=config)[0])
    assert torch.equal(seen["default"][1], synthetic.variant("syn_b1", "bandstop", (1, 2), "test", 16)[0])
    assert not any(torch.equal(a, b) for a, b in zip(seen["changed"], seen["default"]))


# --------------------------------------------------------------------------- figures
def test_plot_functions_draw_every_panel_and_reject_bad_shapes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fslib import plot

    tracking = pd.concat([random_tracking(0, n_seeds=2).assign(dataset=d) for d in ("syn_b1", "syn_b4")])
    fig, axes = plot.class_accuracy_curves(tracking, threshold=0.9)
    assert axes.shape == (1, 2) and len(axes[0, 0].lines) == 4 + 1  # 4 classes + the threshold line
    with pytest.raises(ValueError, match="bandpass:1"):
        plot.class_accuracy_curves(tracking, sets=("bandpass:1",))
    first = dynamics.learned_at(tracking, 0.7)
    fig2, ax = plot.learned_at_dots(first, until=55)
    n_points = sum(len(c.get_offsets()) for c in ax.collections)
    assert n_points == len(first)  # every (dataset, seed, class): a dot, or a cross if never learned
    deltas = {"syn_b1": np.zeros((6, 4, 4)), "syn_b4": np.ones((6, 4, 4))}
    fig3, axes3 = plot.relative_confusion_grid(deltas)
    assert axes3.shape == (2, 6) and axes3[1, 5].images[0].get_array().mean() == 1
    with pytest.raises(ValueError, match="6 pairs"):
        plot.relative_confusion_grid({"syn_b1": np.zeros((5, 4, 4))})
    plt.close("all")


def test_relative_confusion_matches_a_direct_count():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (60,), generator=g)
    p0, p1 = torch.randint(0, 3, (60,), generator=g), torch.randint(0, 3, (60,), generator=g)
    conf = confusion_matrix(labels, p0, 3)
    delta = dynamics.relative_confusion(p0, p1, labels, 3)
    n = np.bincount(labels.numpy(), minlength=3)
    expected = (confusion_matrix(labels, p1, 3) - conf) / n[:, None] * 100
    assert np.allclose(delta, expected) and np.allclose(delta.sum(axis=1), 0)
    acc_change = [((p1 == labels) & (labels == i)).sum() - ((p0 == labels) & (labels == i)).sum() for i in range(3)]
    assert np.allclose(np.diag(delta), np.array(acc_change, dtype=float) / n * 100)
    logits = torch.nn.functional.one_hot(p1, 3).float()
    assert np.allclose(dynamics.relative_confusion(p0, logits, labels, 3), delta)
