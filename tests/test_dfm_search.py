"""Tests of fslib.dfm.search: first-order maps against the exact ablation, verified and raced
DFMs against exact DFMs, set-search and HFSS masks (symmetry, size, determinism, resume), a
planted frequency found by every method, and clear errors for bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from fslib import dfm
from fslib.dfm.search import (
    PassCounter,
    agreement,
    contains_exact_top,
    error_by_radius,
    exact_top_units,
    first_order_dfms,
    first_order_loss,
    hfss,
    hfss_candidates,
    method_summary,
    race_dfms,
    set_search,
    unit_spearman,
    verified_dfms,
)
from fslib.dfm.search.result import load_result, save_result
from fslib.dfm.search.subset import ablation_loss_subset, units_to_map
from fslib.spectral import conjugate_mirror

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class SmoothNet(nn.Module):
    """A small smooth conv net (tanh), float64; ``fail_after`` makes it raise after n forwards."""

    def __init__(self, num_classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, 8, 3, padding=1, stride=2),
                                  nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
        self.double()
        self.fail_after: int | None = None
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated interruption")
        return 3.0 * self.body(x)


def data(n=24, size=8, classes=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=gen, dtype=torch.float64)
    return x, torch.arange(n) % classes


# --------------------------------------------------------------------------- planted model
FREQS = [(1, 2), (3, 0), (0, 4)]  # planted (row, col) frequency per class, from DC, at 16 px


def planted_position(k: int, size: int = 16) -> tuple[int, int]:
    return size // 2 + FREQS[k][0], size // 2 + FREQS[k][1]


class PlantedNet(nn.Module):
    """Logit k = beta * (projection of the input on class k's planted cosine) - 1: only the
    planted frequency of each class matters."""

    def __init__(self, size: int = 16, beta: float = 4.0):
        super().__init__()
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        pats = []
        for fr, fs in FREQS:
            p = torch.cos(2 * math.pi * (fr * yy + fs * xx) / size).double()
            pats.append((p / p.norm()).expand(3, size, size) / math.sqrt(3))
        self.register_buffer("patterns", torch.stack(pats).reshape(len(FREQS), -1))
        self.scale = nn.Parameter(torch.tensor(beta, dtype=torch.float64))

    def forward(self, x):
        return self.scale * (x.flatten(1) @ self.patterns.T) - 1.0


def planted_data(n=30, size=16, amplitude=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    net = PlantedNet(size)
    labels = torch.arange(n) % len(FREQS)
    x = 0.3 * torch.randn(n, 3, size, size, generator=gen, dtype=torch.float64)
    x += amplitude * net.patterns[labels].reshape(n, 3, size, size)
    return net, x, labels


def holds_planted(dfms: torch.Tensor) -> list[bool]:
    return [bool(dfms[k][planted_position(k)]) for k in range(len(FREQS))]


# --------------------------------------------------------------------------- first order
@pytest.mark.parametrize("estimator", ["tangent", "logit"])
@pytest.mark.parametrize("patch_size", [1, 2])
def test_first_order_matches_exact_to_first_order(estimator, patch_size):
    """Shrinking the input shrinks every removal; the estimate's error relative to the exact
    change then falls linearly with the scale (second-order remainder)."""
    net = SmoothNet()
    x, y = data()
    errors = []
    for scale in (0.1, 0.01):
        xs = x * scale
        exact = dfm.ablation_loss(net, xs, y, 3, patch_size=patch_size, device="cpu", progress=False)
        base = dfm.class_losses(net, xs, y, 3, device="cpu")[:, None, None]
        est = first_order_loss(net, xs, y, 3, patch_size=patch_size, estimator=estimator, device="cpu",
                               progress=False)
        errors.append(float((est - exact).abs().max() / (exact - base).abs().max()))
    assert errors[1] < 0.02
    assert 5 < errors[0] / errors[1] < 20  # linear in the scale: 10x smaller at 10x smaller scale


def test_path_integration_is_exact_for_removing_everything():
    """Integrated gradients from the image to the all-removed image: summed over all units it
    telescopes to L(0) - L(x), up to the Riemann error, which shrinks with the steps."""
    net = SmoothNet()
    x, y = data(n=6)
    units = dfm.ablation_units(8, 8)
    base = dfm.class_losses(net, x, y, 3, device="cpu")
    zero = dfm.class_losses(net, torch.zeros_like(x), y, 3, device="cpu")
    gaps = []
    for steps in (4, 32):
        est = first_order_loss(net, x, y, 3, steps=steps, device="cpu", progress=False)
        per_unit = dfm_search_unit_values(est, units) - base[:, None]  # (C, U) estimated changes
        gaps.append(float((per_unit.sum(1) - (zero - base)).abs().max()))
    assert gaps[1] < gaps[0] / 4


def dfm_search_unit_values(maps, units):
    from fslib.dfm.search.subset import map_to_units

    return map_to_units(maps, units)


def test_first_order_tracks_fewer_logits_consistently():
    net = SmoothNet()
    x, y = data()
    full = first_order_loss(net, x, y, 3, estimator="logit", device="cpu", progress=False)
    same = first_order_loss(net, x, y, 3, estimator="logit", logits=3, device="cpu", progress=False)
    fewer = first_order_loss(net, x, y, 3, estimator="logit", logits=1, device="cpu", progress=False)
    assert torch.allclose(full, same)
    assert not torch.allclose(full, fewer)


def test_rectified_screen_counts_decreases_as_no_change():
    from fslib.dfm.search import first_order_unit_losses
    from fslib.dfm.search.subset import map_to_units

    net = SmoothNet()
    x, y = data()
    losses, est = first_order_unit_losses(net, x, y, 3, device="cpu", progress=False)
    signed = first_order_loss(net, x, y, 3, device="cpu", progress=False)
    rect = first_order_loss(net, x, y, 3, rectify=True, device="cpu", progress=False)
    units = dfm.ablation_units(8, 8)
    manual = torch.stack([(losses[:, None] + (est - losses[:, None]).clamp_min(0))[y == k].mean(0) for k in range(3)])
    assert torch.allclose(map_to_units(rect, units), manual)
    assert torch.allclose(map_to_units(signed, units), torch.stack([est[y == k].mean(0) for k in range(3)]))
    assert (rect >= signed - 1e-12).all() and (rect > signed + 1e-6).any()


def test_first_order_restores_model_state():
    net = SmoothNet()
    net.train()
    x, y = data()
    first_order_loss(net, x, y, 3, device="cpu", progress=False)
    assert net.training and all(p.requires_grad for p in net.parameters())


# --------------------------------------------------------------------------- exact subset / verified / race
def test_subset_ablation_equals_full_ablation_where_selected():
    net = SmoothNet()
    x, y = data()
    units = dfm.ablation_units(8, 8, 2)
    exact = dfm.ablation_loss(net, x, y, 3, patch_size=2, device="cpu", progress=False)
    sel = torch.rand(3, len(units), generator=torch.Generator().manual_seed(1)) < 0.5
    vals = ablation_loss_subset(net, x, y, 3, sel, patch_size=2, device="cpu", progress=False)
    assert torch.isnan(vals[~sel]).all()
    full = units_to_map(torch.where(sel, vals, torch.zeros_like(vals)), units)
    owned = units_to_map(sel.double(), units).bool()
    assert torch.allclose(full[owned], exact[owned], atol=1e-12)


@pytest.mark.parametrize("patch_size", [1, 2])
def test_verified_equals_exact_when_candidates_hold_the_top_set(patch_size):
    """A screen that ranks the exact order backwards still gives the exact DFM once the
    candidates reach the exact top set; with too few candidates it does not."""
    net = SmoothNet()
    x, y = data(n=30)
    exact = dfm.ablation_loss(net, x, y, 3, patch_size=patch_size, device="cpu", progress=False)
    top = 0.2
    need = exact_top_units(exact, top, patch_size)
    truth = dfm.dominant_frequency_maps(exact, top)
    # a screen that puts the needed units last among the candidates: rank by "needed", then reversed loss
    screen = -exact + 1000.0 * dfm_search_unit_map(need, patch_size, exact.shape[-1])
    n_units = len(dfm.ablation_units(8, 8, patch_size))
    mult = int(need.sum(1).max()) / math.ceil(top * n_units)
    res = verified_dfms(net, x, y, 3, top=top, patch_size=patch_size, screen="maps", screen_maps=screen,
                        candidates=mult, device="cpu", progress=False)
    assert contains_exact_top(res.extras["candidates"], exact, top, patch_size).all()
    assert torch.equal(res.dfms, truth)
    bad = verified_dfms(net, x, y, 3, top=top, patch_size=patch_size, screen="maps", screen_maps=-exact,
                        candidates=1.5, device="cpu", progress=False)
    held = contains_exact_top(bad.extras["candidates"], exact, top, patch_size)
    assert not held.all()
    assert not torch.equal(bad.dfms[~held], truth[~held])


def test_adaptive_verification_spends_where_the_screen_fails():
    """A perfect screen stops at the first candidates; a reversed one keeps verifying up to the
    cap, which then holds every unit, so its DFM is exact."""
    net = SmoothNet()
    x, y = data(n=30)
    exact = dfm.ablation_loss(net, x, y, 3, device="cpu", progress=False)
    kw = dict(top=0.2, screen="maps", candidates=1.5, adaptive=True, device="cpu", progress=False)
    good = verified_dfms(net, x, y, 3, screen_maps=exact, max_candidates=3.0, **kw)
    first = math.ceil(1.5 * math.ceil(0.2 * 34))
    assert good.provenance["n_candidates"] == [first] * 3
    bad = verified_dfms(net, x, y, 3, screen_maps=-exact, max_candidates=20.0, **kw)
    assert all(n > first for n in bad.provenance["n_candidates"])
    assert all(n <= 34 for n in bad.provenance["n_candidates"])
    held = contains_exact_top(bad.extras["candidates"], exact, 0.2)
    truth = dfm.dominant_frequency_maps(exact, 0.2)
    assert all(torch.equal(bad.dfms[k], truth[k]) for k in held.nonzero().flatten().tolist())


def dfm_search_unit_map(flags, patch_size, size):
    return units_to_map(flags.double(), dfm.ablation_units(size, size, patch_size))


@pytest.mark.parametrize("prefilter, control", [(1.0, False), (0.5, False), (1.0, True)])
def test_race_values_are_exact_and_cost_less(prefilter, control):
    net = SmoothNet()
    x, y = data(n=60)
    exact = dfm.ablation_loss(net, x, y, 3, device="cpu", progress=False)
    res = race_dfms(net, x, y, 3, top=0.1, schedule=((0.1, 6.0), (0.3, 3.0)), prefilter=prefilter, control=control,
                    device="cpu", progress=False)
    ok = ~torch.isnan(res.maps)
    assert torch.allclose(res.maps[ok], exact[ok], atol=1e-12)
    held = contains_exact_top(res.extras["candidates"], exact, 0.1)
    truth = dfm.dominant_frequency_maps(exact, 0.1)
    for k in held.nonzero().flatten().tolist():
        assert torch.equal(res.dfms[k], truth[k])
    assert res.provenance["forward_equivalents"] < len(dfm.ablation_units(8, 8))
    if prefilter == 1.0 and not control:  # the planned cost is the measured one
        from fslib.dfm.search.race import race_cost

        planned = race_cost(20, len(dfm.ablation_units(8, 8)), math.ceil(0.1 * 34), ((0.1, 6.0), (0.3, 3.0)))
        assert res.provenance["forward_equivalents"] == pytest.approx(planned)


def test_exact_top_units_covers_the_dfm():
    maps = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    units = dfm.ablation_units(8, 8)
    maps = units_to_map(dfm_search_unit_values(maps, units), units)  # one value per pair
    need = exact_top_units(maps, 0.25)
    owned = units_to_map(need.double(), units).bool()
    assert (owned | ~dfm.dominant_frequency_maps(maps, 0.25)).all()
    assert (need.sum(1) == 8 + 1).all()  # 16 positions = 8 pairs, plus the first pair left out


# --------------------------------------------------------------------------- set search / HFSS
@pytest.mark.parametrize("top", [0.05, 0.1, 0.3])
def test_set_search_masks_are_symmetric_and_of_the_requested_size(top):
    net = SmoothNet()
    x, y = data(n=18, size=16)
    res = set_search(net.float(), x.float(), y, 3, top=top, rounds=1, proposals=2, device="cpu", progress=False)
    target = math.floor(top * 256 + 0.5)
    sizes = res.dfms.flatten(1).sum(1)
    assert ((sizes == target) | (sizes == target - 1)).all()
    assert torch.equal(res.dfms, conjugate_mirror(res.dfms))
    assert res.dfms.dtype == torch.bool and res.dfms.shape == (3, 16, 16)


def test_set_search_resumes_from_a_checkpoint(tmp_path):
    x, y = data(n=18, size=16)
    kw = dict(top=0.1, rounds=2, proposals=2, device="cpu", progress=False, seed_maps=torch.rand(3, 16, 16))
    whole = set_search(SmoothNet().float(), x.float(), y, 3, **kw)
    net = SmoothNet().float()
    net.fail_after = 8  # seeds, then a few rounds
    path = tmp_path / "ck.npz"
    with pytest.raises(RuntimeError, match="simulated"):
        set_search(net, x.float(), y, 3, checkpoint=path, **kw)
    assert path.exists()
    net.fail_after = None
    resumed = set_search(net, x.float(), y, 3, checkpoint=path, **kw)
    assert torch.equal(resumed.dfms, whole.dfms)


def test_set_search_penalises_masks_that_predict_the_class_everywhere():
    """A model that predicts class 0 for any filtered image: its masks have TPR 1 and FPR 1 for
    class 0, so J = 0, no better than the empty prediction of the other classes."""
    from fslib.dfm.search.maskscore import score_masks

    class Always0(nn.Module):
        def forward(self, x):
            return torch.stack([x.sum((1, 2, 3)) * 0 + 5, x.sum((1, 2, 3)) * 0, x.sum((1, 2, 3)) * 0], 1)

    x, y = data(n=9)
    sc = score_masks(Always0(), x, y, 3, torch.ones(1, 8, 8, dtype=torch.bool), batch_size=16,
                     device=torch.device("cpu"))
    j = sc.objective(1.0, counts=torch.bincount(y))
    assert sc.tpr[0, 0] == 1 and sc.fpr[0, 0] == 1 and abs(float(j[0, 0])) < 0.05
    assert sc.loss[0, 0] < sc.loss[0, 1]  # HFSS's criterion prefers it for class 0


def test_hfss_candidates_are_conjugate_symmetric_unlike_the_released_mirror():
    rng = np.random.default_rng(0)
    for size, g in ((32, 4), (32, 16), (32, 32), (64, 32)):
        fixed = torch.from_numpy(hfss_candidates(size, g, 0.5, 9, rng))
        assert torch.equal(fixed, conjugate_mirror(fixed))
        released = torch.from_numpy(hfss_candidates(size, g, 0.5, 9, rng, mirror="released"))
        assert not torch.equal(released, conjugate_mirror(released))
    parents = fixed[None, :3].numpy()
    child = hfss_candidates(64, 32, 0.9, 9, rng, parents)
    assert all(any((c <= p).all() for p in parents[0]) for c in child)  # every child lies in a parent


def test_hfss_is_deterministic_and_resumes(tmp_path):
    net = SmoothNet().float()
    x, y = data(n=12, size=32)
    kw = dict(n_candidates=9, top_n=2, device="cpu", progress=False)
    a = hfss(net, x.float(), y, 3, **kw)
    b = hfss(net, x.float(), y, 3, **kw)
    assert torch.equal(a.dfms, b.dfms)
    assert torch.equal(a.dfms, conjugate_mirror(a.dfms))
    net.fail_after = net.calls + 3  # dies in the second stage
    path = tmp_path / "h.npz"
    with pytest.raises(RuntimeError, match="simulated"):
        hfss(net, x.float(), y, 3, checkpoint=path, **kw)
    net.fail_after = None
    assert torch.equal(hfss(net, x.float(), y, 3, checkpoint=path, **kw).dfms, a.dfms)


# --------------------------------------------------------------------------- planted truth
def test_every_method_finds_the_planted_frequencies():
    net, x, y = planted_data()
    kw = dict(top=0.05, device="cpu", progress=False)
    exact = dfm.dominant_frequency_maps(dfm.ablation_loss(net, x, y, 3, device="cpu", progress=False), 0.05)
    results = {
        "exact": exact,
        "tangent": first_order_dfms(net, x, y, 3, **kw).dfms,
        "logit": first_order_dfms(net, x, y, 3, estimator="logit", **kw).dfms,
        "verified": verified_dfms(net, x, y, 3, candidates=2.0, **kw).dfms,
        "race": race_dfms(net, x, y, 3, **kw).dfms,
        "set_search": set_search(net, x, y, 3, rounds=1, proposals=2, **kw).dfms,
        "hfss": hfss(net, x, y, 3, n_candidates=30, **{**kw, "top": 0.2}).dfms,
    }
    for name, dfms in results.items():
        assert holds_planted(dfms) == [True, True, True], name


# --------------------------------------------------------------------------- results, costs, errors
def test_result_round_trip(tmp_path):
    net = SmoothNet()
    x, y = data()
    res = verified_dfms(net, x, y, 3, top=0.2, device="cpu", progress=False)
    save_result(tmp_path / "r.npz", res)
    back = load_result(tmp_path / "r.npz")
    assert torch.equal(back.dfms, res.dfms) and torch.equal(back.maps.isnan(), res.maps.isnan())
    assert back.provenance == res.provenance and set(back.extras) == set(res.extras)


def test_run_dfms_runs_a_registered_method_cached_by_method_and_settings(tmp_path, monkeypatch):
    """DFMConfig(method="verified", options=...) goes through run_dfms: cached under a key with
    the method and its settings, the cost record in the provenance."""
    from fslib.inference import Classifier

    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path))
    net = SmoothNet().float()
    subject = Classifier(net, (0.5,) * 3, (0.25,) * 3, ("a", "b", "c"), key="tiny")
    images = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(12) % 3
    config = dfm.DFMConfig(method="verified", top=0.2, thresholds=(0.2,), options={"candidates": 2.0})
    a = dfm.run_dfms(subject, images, labels, config=config, device="cpu", progress=False)
    calls = net.calls
    again = dfm.run_dfms(subject, images, labels, config=config, device="cpu", progress=False)
    assert net.calls == calls and torch.equal(again.dfms[0.2], a.dfms[0.2])  # loaded, not recomputed
    assert again.provenance["method"] == "verified" and again.provenance["options"] == {"candidates": 2.0}
    assert 0 < again.provenance["forward_equivalents"] < len(dfm.ablation_units(8, 8))
    direct = verified_dfms(net, subject.normalize(images), labels, 3, top=0.2, candidates=2.0, device="cpu",
                           progress=False)
    assert torch.equal(a.dfms[0.2], direct.dfms)
    paths = {dfm.dfm_cache_path(subject, images, labels, c) for c in
             (config, config.with_(options={"candidates": 3.0}), config.with_(method="race", options={}))}
    assert len(paths) == 3
    with pytest.raises(TypeError, match="penalty"):
        dfm.run_dfms(subject, images, labels, config=config.with_(options={"penalty": 1.0}), device="cpu",
                     progress=False)
    with pytest.raises(ValueError, match="unknown DFM method"):
        dfm.DFMConfig(method="magic")
    with pytest.raises(ValueError, match="thresholds="):
        dfm.run_dfms(subject, images, labels, config=dfm.DFMConfig(method="set_search", top=0.2), device="cpu",
                     progress=False)


def test_registered_ranking_orders_verified_units_first():
    """The registry's verified ranking thresholds back to the verified DFM at its own size, and
    ranks every verified unit above every unverified one (which verified_units recovers)."""
    from fslib.dfm.search import complete_scores, verified_units

    net = SmoothNet()
    x, y = data()
    config = dfm.DFMConfig(method="verified", top=0.2, thresholds=(0.1, 0.2, 0.5), options={"candidates": 2.0})
    out = dfm.METHODS["verified"](net, x, y, 3, config, batch_size=None, device="cpu", progress=False,
                                  checkpoint=None)
    direct = verified_dfms(net, x, y, 3, top=0.2, candidates=2.0, device="cpu", progress=False)
    assert torch.equal(out.masks[0.2], direct.dfms) and set(out.masks) == {0.1, 0.2, 0.5}
    assert torch.isfinite(out.scores).all()
    scores = complete_scores(direct)
    known = torch.isfinite(direct.maps)
    for k in range(3):
        assert scores[k][known[k]].min() > scores[k][~known[k]].max()
    assert torch.equal(verified_units(out.scores, out.info["n_candidates"]), direct.extras["candidates"])
    config = dfm.DFMConfig(method="set_search", top=0.1, thresholds=(0.1,), options={"rounds": 1, "proposals": 1})
    ss = dfm.METHODS["set_search"](net.float(), x.float(), y, 3, config, batch_size=None, device="cpu",
                                   progress=False, checkpoint=None)
    assert ss.masks[0.1].shape == (3, 8, 8) and torch.equal(ss.masks[0.1], conjugate_mirror(ss.masks[0.1]))


def test_costs_are_counted():
    net = SmoothNet()
    x, y = data(n=12)
    fo = first_order_dfms(net, x, y, 3, top=0.2, device="cpu", progress=False)
    assert fo.provenance["forwards"] == 12 and fo.provenance["backwards"] == 12
    assert fo.provenance["forward_equivalents"] == 3
    lg = first_order_dfms(net, x, y, 3, top=0.2, estimator="logit", device="cpu", progress=False)
    assert lg.provenance["backwards"] == 36  # one per tracked logit
    with PassCounter(net) as pc:
        dfm.ablation_loss(net, x, y, 3, device="cpu", progress=False)
    assert pc.forwards == 12 * len(dfm.ablation_units(8, 8))


class NoGrad(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        with torch.no_grad():
            return self.lin(x.mean((2, 3)))


@pytest.mark.parametrize("top", [0, 1, 1.5, -0.1, float("nan"), True])
def test_bad_top_is_rejected_by_every_method(top):
    net = SmoothNet()
    x, y = data()
    for fn in (first_order_dfms, verified_dfms, race_dfms, set_search, hfss):
        with pytest.raises(ValueError, match="top must be a fraction in"):
            fn(net, x, y, 3, top=top, device="cpu", progress=False)


def test_bad_inputs_get_clear_errors():
    net = SmoothNet()
    x, y = data()
    with pytest.raises(ValueError, match="no input gradient"):
        first_order_loss(NoGrad(), x.float(), y, 3, device="cpu", progress=False)
    with pytest.raises(ValueError, match="labels must have shape"):
        first_order_loss(net, x, y[:-1], 3, device="cpu", progress=False)
    with pytest.raises(ValueError, match="float tensor"):
        verified_dfms(net, (x * 100).to(torch.uint8), y, 3, device="cpu", progress=False)
    with pytest.raises(ValueError, match="screen_maps must have shape"):
        verified_dfms(net, x, y, 3, screen="maps", screen_maps=torch.zeros(3, 4, 4), device="cpu", progress=False)
    with pytest.raises(ValueError, match="candidates must be"):
        verified_dfms(net, x, y, 3, candidates=0, device="cpu", progress=False)
    with pytest.raises(ValueError, match="have no images"):
        first_order_loss(net, x, torch.zeros_like(y), 3, device="cpu", progress=False)
    with pytest.raises(ValueError, match="estimator must be"):
        first_order_loss(net, x, y, 3, estimator="magnitude", device="cpu", progress=False)
    with pytest.raises(ValueError, match="schedule"):
        race_dfms(net, x, y, 3, schedule=((0.5, 2.0), (0.2, 1.0)), device="cpu", progress=False)
    with pytest.raises(ValueError, match="divisible by 4"):
        hfss(net, torch.randn(6, 3, 18, 18, dtype=torch.float64), torch.arange(6) % 3, 3, device="cpu",
             progress=False)
    with pytest.raises(ValueError, match="penalty"):
        set_search(net, x, y, 3, penalty=-1, device="cpu", progress=False)


# --------------------------------------------------------------------------- agreement with the exact ranking
def test_agreement_is_perfect_for_the_exact_maps_and_falls_for_reversed_ones():
    net = SmoothNet()
    x, y = data()
    exact = dfm.ablation_loss(net, x, y, 3, device="cpu", progress=False)
    same = agreement(exact, dfm.dominant_frequency_maps(exact, 0.2), exact, top=0.2)
    assert np.allclose(same["spearman"], 1.0) and np.allclose(same["iou"], 1.0)
    flipped = -exact
    other = agreement(flipped, dfm.dominant_frequency_maps(flipped, 0.2), exact, top=0.2)
    assert np.allclose(other["spearman"], -1.0) and (other["iou"] < 0.5).all()
    masks = agreement(dfm.dominant_frequency_maps(exact, 0.2).double(), dfm.dominant_frequency_maps(exact, 0.2),
                      exact, top=0.2)
    assert masks["spearman"].isna().all() and np.allclose(masks["iou"], 1.0)  # mask-only: no ranking to compare
    partial = exact.clone()
    partial[:, :4] = float("nan")  # unscored units leave the correlation, not the result
    assert np.allclose(unit_spearman(partial, exact), 1.0)
    with pytest.raises(ValueError, match="one shape"):
        unit_spearman(exact[:2], exact)


def test_method_summary_counts_cost_ratios_and_strong_classes():
    import pandas as pd

    t_exact = pd.DataFrame({"tpr": [0.9, 0.2], "fpr": [0.05, 0.0], "shortcut": [True, False], "n_freq": [50, 50]})
    t_fast = pd.DataFrame({"tpr": [0.9, 0.8], "fpr": [0.5, 0.05], "shortcut": [True, True], "n_freq": [50, 52]})
    prov = {"exact": {"forward_equivalents": 500, "seconds": 10.0}, "fast": {"forward_equivalents": 100}}
    agr = {"fast": pd.DataFrame({"spearman": [0.5, 0.7], "iou": [0.2, 0.6]})}
    s = method_summary(prov, agr, {"exact": t_exact, "fast": t_fast})
    assert s.loc["fast", "x_exact"] == 0.2 and s.loc["exact", "x_exact"] == 1.0
    assert s.loc["exact", "n_strong"] == 1 and s.loc["fast", "n_strong"] == 1 and s.loc["fast", "n_shortcut"] == 2
    assert s.loc["fast", "n_low_fpr"] == 1 and s.loc["exact", "n_low_fpr"] == 1
    assert s.loc["fast", "iou_median"] == pytest.approx(0.4) and np.isnan(s.loc["exact", "iou_median"])
    assert np.isnan(s.loc["fast", "seconds"])
    with pytest.raises(ValueError, match="exact method"):
        method_summary({"fast": prov["fast"]}, agr, {"fast": t_fast})


def test_cost_agreement_plot_draws_one_dot_per_scored_method():
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from fslib import plot

    data = pd.DataFrame({"x_exact": [0.01, 0.2, 1.0], "iou_median": [0.3, 0.9, float("nan")],
                         "iou_min": [0.1, 0.8, float("nan")]}, index=["a", "b", "c"])
    fig, ax = plot.cost_agreement(data)
    assert [t.get_text() for t in ax.texts] == ["a", "b"]
    matplotlib.pyplot.close(fig)


def test_error_by_radius_is_zero_for_the_exact_maps_and_locates_a_wrong_ring():
    net = SmoothNet()
    x, y = data(size=16)
    exact = dfm.ablation_loss(net, x, y, 3, device="cpu", progress=False)
    base = dfm.class_losses(net, x, y, 3, device="cpu")
    same = error_by_radius(exact, exact, base, top=0.1)
    assert (same["rel_error"] == 0).all() and same["recall"].dropna().eq(1).all()
    assert same["exact_dfm_share"].sum() == pytest.approx(1.0) and same["positions"].sum() == 16 * 16
    wrong = exact.clone()
    wrong[:, 8, 8] = base + 10 * (exact[:, 8, 8] - base)  # DC's effect overestimated tenfold
    table = error_by_radius(wrong, exact, base, top=0.1).set_index("ring")
    assert table.loc["0-1", "rel_error"] == pytest.approx(9.0) and (table.drop("0-1")["rel_error"] == 0).all()
