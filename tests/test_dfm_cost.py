"""Tests of fslib.dfm.cost and the method registry's cost hook: the estimate counts exactly
the forward passes the protocol runs, knows what the cache holds, and plugs in new methods."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch
from fourier_probe import probe_subject, uint8_set

from fslib import dfm, report
from fslib.dfm import cost
from fslib.inference import Classifier


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path / "cache"))


class Counting(torch.nn.Module):
    """Wraps a model and counts the images it is run on."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.images = model, 0

    def forward(self, x):
        self.images += x.shape[0]
        return self.inner(x)


def counting_subject():
    probe = probe_subject()
    return Classifier(Counting(probe.model), probe.mean, probe.std, probe.class_names, key="counting")


@pytest.mark.parametrize("h,w,p", [(32, 32, 1), (224, 224, 16), (9, 7, 2)])
def test_exact_cost_is_units_times_images(h, w, p):
    c = dfm.method_cost(dfm.DFMConfig(patch_size=p), (3, h, w), 7, 10)
    assert c.forwards == 7 * len(dfm.ablation_units(h, w, p)) and c.seconds == 0.0  # no probe: nothing timed


def test_exact_cost_times_the_removal_it_adds_to_the_forwards():
    c = dfm.method_cost(dfm.DFMConfig(patch_size=4), (3, 16, 16), 5, 3, device="cpu", probe=True)
    assert c.forwards == 5 * len(dfm.ablation_units(16, 16, 4)) and c.seconds > 0


def test_estimate_counts_exactly_the_forwards_the_protocol_runs():
    subject = counting_subject()
    images, labels = uint8_set(seed=1, per_class=5)
    config = dfm.DFMConfig(top=2 / 64, thresholds=(2 / 64, 0.1), n_null=3, n_boot=10)
    est = cost.estimate(subject, images, labels, n_rank=8, n_score=12, config=config, device="cpu")
    ranking, *tests = est.stages
    assert [s.status for s in est.stages] == ["to run"] * 3 and len(tests) == 2
    rank, score = dfm.rank_score_split(labels, 8, 12, config.seed)
    counter = subject.model
    counter.images = 0
    saved = dfm.run_dfms(subject, images[rank], labels[rank], config=config, device="cpu", progress=False)
    assert counter.images == ranking.forwards + 1  # + the one-image probe of the number of logits
    counter.images = 0
    dfm.shortcut_test_sweep(subject, images[score], labels[score], saved.dfms, config=config, device="cpu",
                            progress=False)
    assert counter.images == sum(s.forwards for s in tests)
    spf = est.seconds_per_forward
    assert all(s.seconds == pytest.approx(s.forwards * spf) for s in tests)
    assert ranking.seconds > ranking.forwards * spf  # the exact ranking adds its timed removal of sinusoids
    assert est.total_seconds == pytest.approx(sum(s.seconds for s in est.stages))
    # everything is cached now: the estimate says so and costs nothing
    again = cost.estimate(subject, images, labels, n_rank=8, n_score=12, config=config, device="cpu", probe=False)
    assert [s.status for s in again.stages] == ["cached"] * 3 and again.total_seconds == 0
    assert "cached" in str(again) and "total: 0 s" in str(again)


def test_a_partial_checkpoint_lowers_the_estimate():
    subject = counting_subject()
    images, labels = uint8_set(seed=2, per_class=4)
    config = dfm.DFMConfig(n_null=0, n_boot=0)
    rank, _ = dfm.rank_score_split(labels, 8, 8, 0)
    path = dfm.dfm_cache_path(subject, images[rank], labels[rank], config)
    full = cost.estimate(subject, images, labels, n_rank=8, n_score=8, config=config, probe=False).stages[0]
    done = np.zeros(len(dfm.ablation_units(8, 8)), dtype=bool)
    done[: len(done) // 4] = True
    np.savez(path.with_name(path.stem + ".partial.npz"), done=done)
    part = cost.estimate(subject, images, labels, n_rank=8, n_score=8, config=config, probe=False).stages[0]
    assert part.status == f"resumes ({100 * done.mean():.0f} % done)"
    assert part.forwards == round(full.forwards * (1 - done.mean()))


def test_a_registered_method_brings_its_cost_and_one_without_says_so(monkeypatch):
    monkeypatch.setattr(dfm.methods, "METHODS", dict(dfm.METHODS))
    monkeypatch.setattr(dfm.methods, "ESTIMATES", dict(dfm.ESTIMATES))
    monkeypatch.setattr(dfm.config, "METHODS", dfm.methods.METHODS)

    def rank(*a, **k):
        raise AssertionError("not run by an estimate")

    dfm.methods.register_method("cheap", rank, estimate=lambda cfg, shape, n, c, **kw: dfm.Cost(3 * n, f"3 x {n}"))
    dfm.methods.register_method("mystery", rank)
    subject = probe_subject()
    images, labels = uint8_set(seed=3)
    est = cost.estimate(subject, images, labels, n_rank=4, n_score=8, config=dfm.DFMConfig(method="cheap"), probe=False)
    assert est.stages[0].forwards == 12 and est.stages[0].detail == "3 x 4"
    est = cost.estimate(subject, images, labels, n_rank=4, n_score=8, config=dfm.DFMConfig(method="mystery"))
    assert est.stages[0].status == "no estimate" and est.total_seconds is None and "unknown" in str(est)
    with pytest.raises(ValueError, match="already registered"):
        dfm.methods.register_method("cheap", lambda *a, **k: None)


def test_seconds_per_forward_is_positive_and_uses_the_given_batch():
    spf, bs = cost.seconds_per_forward(torch.nn.Conv2d(3, 2, 3), (3, 8, 8), batch_size=5, device="cpu")
    assert spf > 0 and bs == 5


def test_same_images_scores_on_the_ranking_images_and_warns():
    subject = probe_subject()
    images, labels = uint8_set(seed=5)
    config = dfm.DFMConfig(top=2 / 64, n_null=2, n_boot=0)
    with pytest.warns(UserWarning, match="inflates the TPR"):
        a = dfm.shortcut_analysis(subject, images, labels, n_rank=8, n_score=0, config=config, same_images=True,
                                  device="cpu", progress=False)
    assert torch.equal(a.rank, a.score) and len(a.rank) == 8
    with pytest.raises(ValueError, match="n_score must be 0"):
        dfm.split_for(labels, 4, 4, same_images=True)


@pytest.mark.parametrize("seed", range(5))
def test_class_verdicts_agree_with_the_overall_verdict(seed):
    rng = np.random.default_rng(seed)
    t = pd.DataFrame({"tpr": rng.random(6), "fpr": rng.random(6) * 0.3, "shortcut": rng.random(6) > 0.5})
    overall, strong = report.shortcut_verdict(t)
    per_class = report.class_verdicts(t)
    assert (per_class == "strong shortcut").tolist() == strong.tolist()
    assert (overall == "holds") == strong.any()
    assert (overall == "partly") == (not strong.any() and (per_class == "beats the null").any())


def tiny_net(num_classes=4):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, num_classes))


@pytest.mark.parametrize("p", [1, 2])
def test_extrapolation_counts_the_passes_the_searches_run(p):
    """The extrapolated ablations per image are what an exact ablation and a verified search
    of that shape actually run (counted by a hook), and the seconds are those counts at the rates."""
    net, shape, top, cand = tiny_net(), (3, 8, 8), 0.1, 1.5
    ext = cost.ranking_extrapolation(net, shape, 7, 4, patch_size=p, top=top, candidates=cand, n_units=4, n_timing=2,
                                     min_seconds=0.0, device="cpu")
    x, y = torch.randn(8, *shape, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 4
    with dfm.search.PassCounter(net) as pc:
        dfm.ablation_loss(net, x, y, 4, patch_size=p, device="cpu", progress=False)
    assert ext.loc["exact", "units"] == ext.loc["exact", "fwd_eq"] == pc.forwards / len(y)
    ver = dfm.search.verified_dfms(net, x, y, 4, top=top, patch_size=p, candidates=cand, device="cpu", progress=False)
    assert ext.loc["verified", "fwd_eq"] == ver.provenance["forward_equivalents"]
    assert ext.loc["verified", "units"] < ext.loc["exact", "units"]
    rate = ext["ablations_per_s"]
    assert (rate > 0).all() and ext.loc["verified", "screen_s_per_image"] > 0 == ext.loc["exact", "screen_s_per_image"]
    np.testing.assert_allclose(ext["seconds"], 7 * (ext["units"] / rate + ext["screen_s_per_image"]))


def test_ablation_rate_stops_when_every_unit_is_timed():
    start = time.perf_counter()
    rate = cost.ablation_rate(tiny_net(), (3, 8, 8), patch_size=2, n_units=3, n_images=2, min_seconds=1e6, device="cpu")
    assert rate > 0 and time.perf_counter() - start < 5  # 16 units, then done: not a million seconds


def test_timing_rejects_bad_input_naming_it():
    with pytest.raises(ValueError, match="min_seconds must be a number >= 0"):
        cost.ablation_rate(tiny_net(), (3, 8, 8), min_seconds=-1, device="cpu")
    with pytest.raises(ValueError, match="n_units must be an int in 1..16"):
        cost.ablation_rate(tiny_net(), (3, 8, 8), patch_size=2, n_units=17, device="cpu")
    with pytest.raises(ValueError, match=r"image_shape must be \(C, H, W\)"):
        cost.ablation_rate(tiny_net(), (8, 8), device="cpu")
    with pytest.raises(ValueError, match="every class needs an image"):
        cost.screen_seconds(tiny_net(), (3, 8, 8), 4, n_images=3, device="cpu")
    with pytest.raises(ValueError, match="candidates must be a positive"):
        cost.ranking_extrapolation(tiny_net(), (3, 8, 8), 5, 4, candidates=0, device="cpu")
