"""Tests of fslib.dfm: exactness against a slow direct ablation, a planted shortcut is found,
threshold counts, symmetry, checkpoint / resume, the shortcut test and storage."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fourier_probe import FREQS, probe_subject, uint8_set

from fslib import dfm
from fslib.constants import normalization
from fslib.dfm.shortcut_test import _null_masks
from fslib.inference import Classifier
from fslib.spectral import (
    conjugate_index,
    conjugate_mirror,
    conjugate_pairs,
    fft_centred,
    filter_frequencies,
    radial_bins,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --------------------------------------------------------------------------- helpers
class TinyNet(nn.Module):
    """A small conv net; ``fail_after`` (not a parameter) makes it raise after n forwards."""

    def __init__(self, num_classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, stride=2)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, num_classes)
        with torch.no_grad():  # non-trivial running statistics, so eval mode matters
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
        self.fail_after: int | None = None
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated interruption")
        x = torch.tanh(self.conv1(x))
        x = torch.relu(self.bn(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def slow_ablation(model, images, labels, num_classes, patch_size):
    """Direct computation: mask the centred spectrum (block and its true conjugate block),
    inverse FFT, real part, forward, per-class mean. One forward per block, no sharing."""
    n, c, h, w = images.shape
    rc, cc = conjugate_index(h).tolist(), conjugate_index(w).tolist()
    out = torch.zeros(num_classes, h, w, dtype=torch.float64)
    model.eval()
    for r0 in range(0, h, patch_size):
        for s0 in range(0, w, patch_size):
            keep = torch.ones(h, w, dtype=torch.bool)
            for r in range(r0, min(r0 + patch_size, h)):
                for s in range(s0, min(s0 + patch_size, w)):
                    keep[r, s] = keep[rc[r], cc[s]] = False
            with torch.no_grad():
                loss = F.cross_entropy(model(filter_frequencies(images, keep)), labels, reduction="none")
            for k in range(num_classes):
                out[k, r0 : r0 + patch_size, s0 : s0 + patch_size] = loss[labels == k].double().mean()
    return out


def data(h, w, n=9, num_classes=3, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, h, w, generator=gen, dtype=dtype)
    labels = torch.arange(n) % num_classes
    return images, labels


# --------------------------------------------------------------------------- units
@pytest.mark.parametrize("h,w", [(7, 7), (8, 8), (6, 9)])
def test_units_patch1_are_the_conjugate_pairs(h, w):
    u = dfm.ablation_units(h, w, 1)
    pairs = conjugate_pairs(h, w)
    assert torch.equal(u.positions[:, 0], pairs[:, 0] * w + pairs[:, 1])
    assert int(u.size.sum()) == h * w
    # both members of a pair own the same unit, and the owner map is conjugate-symmetric
    assert torch.equal(u.owner, conjugate_mirror(u.owner))
    assert torch.bincount(u.owner.flatten()).tolist() == u.size.tolist()


@pytest.mark.parametrize("h,w,p", [(7, 7, 2), (8, 8, 2), (9, 9, 3), (8, 8, 4), (7, 8, 3)])
def test_units_patch_blocks_are_symmetric_and_cover(h, w, p):
    u = dfm.ablation_units(h, w, p)
    # every grid block owns one unit; the units' removed sets are conjugate-symmetric
    blocks = math.ceil(h / p) * math.ceil(w / p)
    assert len(u) <= blocks and torch.unique(u.owner).numel() == len(u)
    for i in range(len(u)):
        removed = torch.zeros(h * w, dtype=torch.bool)
        keep = u.weights[i] > 0
        removed[u.positions[i][keep]] = True
        removed = removed.reshape(h, w) | conjugate_mirror(removed.reshape(h, w))
        assert int(removed.sum()) == int(u.size[i])
        assert bool(removed[u.owner == i].all())  # the block it fills is removed


def test_units_dedupe_blocks_that_are_each_others_mirror():
    # 9x9 with p=3: centred index k mirrors to 8-k, so block [0,3) <-> [6,9) and [3,6) is
    # its own mirror: the 9 grid blocks form 5 units, evaluated once each.
    u = dfm.ablation_units(9, 9, 3)
    assert len(u) == 5
    assert u.owner[4, 4] == u.owner[4, 4]  # DC block owns its own unit
    assert u.owner[0, 0] == u.owner[8, 8] and u.owner[0, 8] == u.owner[8, 0]


# --------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("h,w", [(7, 7), (8, 8)])
@pytest.mark.parametrize("patch_size", [1, 2])
def test_ablation_equals_slow_direct_computation(h, w, patch_size):
    model = TinyNet().double()
    images, labels = data(h, w)
    fast = dfm.ablation_loss(model, images, labels, 3, patch_size=patch_size, batch_size=5, device="cpu",
                             progress=False)
    slow = slow_ablation(model, images, labels, 3, patch_size)
    assert fast.shape == (3, h, w) and fast.dtype == torch.float64
    assert (fast - slow).abs().max().item() < 1e-10


def test_ablation_float32_within_1e5():
    model = TinyNet()
    images, labels = data(8, 8, dtype=torch.float32)
    fast = dfm.ablation_loss(model, images, labels, 3, batch_size=16, device="cpu", progress=False)
    slow = slow_ablation(model, images, labels, 3, 1)
    assert (fast - slow).abs().max().item() < 1e-5


@pytest.mark.parametrize("h,w", [(7, 7), (8, 8), (6, 7)])
def test_ablation_map_is_conjugate_symmetric_and_batch_size_free(h, w):
    model = TinyNet().double()
    images, labels = data(h, w, n=7)
    a = dfm.ablation_loss(model, images, labels, 3, batch_size=3, device="cpu", progress=False)
    b = dfm.ablation_loss(model, images, labels, 3, batch_size=50, device="cpu", progress=False)
    assert torch.equal(a, conjugate_mirror(a))
    assert (a - b).abs().max().item() < 1e-12


def test_ablation_restores_training_mode_and_uses_eval():
    model = TinyNet().double().train()
    images, labels = data(8, 8)
    out = dfm.ablation_loss(model, images, labels, 3, device="cpu", progress=False)
    assert model.training
    assert (out - slow_ablation(model, images, labels, 3, 1)).abs().max() < 1e-10


# --------------------------------------------------------------------------- planted shortcut
class PlantedModel(nn.Module):
    """Logit of class c = scale * sum of |X[q]| over the planted positions q of class c
    (X: centred spectrum summed over channels): a fixed classifier reading a few frequencies."""

    def __init__(self, planted: list[list[tuple[int, int]]], scale: float = 0.2):
        super().__init__()
        self.planted, self.scale = planted, scale

    def forward(self, x):
        spec = fft_centred(x).sum(dim=1)
        feats = [sum(spec[:, r, s].abs() for r, s in qs) for qs in self.planted]
        return self.scale * torch.stack(feats, dim=1)


@pytest.mark.parametrize("h,w", [(8, 8), (9, 9)])
def test_planted_frequencies_are_exactly_the_dfms(h, w):
    planted = [[(1, 2), (3, 5)], [(2, 6), (h // 2, w // 2 + 2)], [(0, 3), (5, 1)]]
    model = PlantedModel(planted)
    images, labels = data(h, w, n=12)
    maps = dfm.ablation_loss(model, images, labels, 3, batch_size=20, device="cpu", progress=False)
    dfms = dfm.dominant_frequency_maps(maps, top=4 / (h * w))  # two pairs = four positions
    rc, cc = conjugate_index(h), conjugate_index(w)
    for k, qs in enumerate(planted):
        expected = torch.zeros(h, w, dtype=torch.bool)
        for r, s in qs:
            expected[r, s] = expected[rc[r], cc[s]] = True
        assert int(expected.sum()) == 4
        assert torch.equal(dfms[k], expected), f"class {k}"


# --------------------------------------------------------------------------- thresholds
@pytest.mark.parametrize("h,w", [(7, 7), (8, 8), (32, 32), (6, 9)])
@pytest.mark.parametrize("top", [0.01, 0.05, 0.1, 0.2, 0.5, 1.0])
def test_dfm_counts_symmetry_and_overshoot_rule(h, w, top):
    gen = torch.Generator().manual_seed(1)
    raw = torch.rand(4, h, w, generator=gen)
    maps = raw + conjugate_mirror(raw)  # conjugate-symmetric like a patch-1 map
    maps[3] = 1.0  # all ties: broken by flat index
    out = dfm.dominant_frequency_maps(maps, top=top)
    target = math.floor(top * h * w + 0.5)
    pairs = conjugate_pairs(h, w)
    size = torch.where((pairs[:, :2] == pairs[:, 2:]).all(1), 1, 2)
    assert torch.equal(out, conjugate_mirror(out))
    for k in range(4):
        count = int(out[k].sum())
        score = maps[k][pairs[:, 0], pairs[:, 1]]
        order = torch.sort(score, descending=True, stable=True).indices
        taken = int((torch.cumsum(size[order], 0) <= target).sum())
        assert count in (target, target - 1)
        if count == target - 1:  # only when the next pair in rank order has two members
            assert int(size[order[taken]]) == 2
        # the kept pairs are exactly the first ones in rank order
        kept = out[k][pairs[:, 0], pairs[:, 1]]
        assert bool(kept[order[:taken]].all()) and not bool(kept[order[taken:]].any())


def test_dfm_ties_are_broken_by_flat_index():
    out = dfm.dominant_frequency_maps(torch.zeros(1, 8, 8), top=6 / 64)
    # representatives in flat order: (0,0) self-conjugate, then (0,1)<->(0,7), (0,2)<->(0,6)
    expected = {(0, 0), (0, 1), (0, 7), (0, 2), (0, 6)}
    assert {tuple(p) for p in out[0].nonzero().tolist()} == expected  # 5: the next pair would make 7


def test_dfm_thresholds_are_nested():
    maps = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
    outs = [dfm.dominant_frequency_maps(maps, t) for t in dfm.PAPER_THRESHOLDS]
    for small, big in zip(outs, outs[1:]):
        assert bool((big | ~small).all())


def test_dfm_block_maps_use_the_best_removal_of_each_pair():
    maps = torch.zeros(1, 8, 8)
    maps[0, 2:4, 2:4] = 5.0  # a block-constant map, not conjugate-symmetric
    out = dfm.dominant_frequency_maps(maps, top=8 / 64)
    assert bool(out[0, 2:4, 2:4].all()) and bool(conjugate_mirror(out)[0, 2:4, 2:4].all())
    assert int(out.sum()) == 8


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan")])
def test_bad_top_is_rejected(bad):
    with pytest.raises(ValueError, match="top"):
        dfm.dominant_frequency_maps(torch.zeros(2, 4, 4), top=bad)


def test_bad_inputs_name_the_problem():
    model = TinyNet().double()
    images, labels = data(8, 8)
    with pytest.raises(ValueError, match="patch_size"):
        dfm.ablation_loss(model, images, labels, 3, patch_size=0, progress=False)
    with pytest.raises(ValueError, match="labels must lie"):
        dfm.ablation_loss(model, images, labels + 1, 3, progress=False)
    with pytest.raises(ValueError, match=r"classes \[3\] have no images"):
        dfm.ablation_loss(TinyNet(num_classes=4).double(), images, labels, 4, progress=False)
    with pytest.raises(ValueError, match="float tensor"):
        dfm.ablation_loss(model, images.to(torch.uint8), labels, 3, progress=False)


def test_num_classes_that_is_not_the_models_output_count_is_named():
    model = TinyNet().double()  # 3 outputs
    images, labels = data(8, 8)
    # was "classes [3] have no images" / an internal "Target 3 is out of bounds"
    for call in (lambda n: dfm.ablation_loss(model, images, labels, n, progress=False),
                 lambda n: dfm.class_losses(model, images, labels, n),
                 lambda n: dfm.ablation_loss(model, images, labels % n, n, progress=False)):
        for n in (2, 4):
            with pytest.raises(ValueError, match=rf"logits of shape \(\d+, 3\) .* but num_classes={n}: .*outputs \(3\)"):
                call(n)
    with pytest.raises(ValueError, match=r"dfms holds 2 class maps"):
        dfm.evaluate_dfms(model, images, labels % 2, torch.ones(2, 8, 8, dtype=torch.bool), n_boot=0, n_null=0,
                          progress=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
def test_images_in_another_dtype_than_the_model_are_named(dtype):
    images, labels = data(8, 8, dtype=dtype)
    with pytest.raises(TypeError, match=f"images are {dtype} but the model's parameters are torch.float64"):
        dfm.ablation_loss(TinyNet().double(), images, labels, 3, progress=False)
    with pytest.raises(TypeError, match=f"images are {dtype} but the model's parameters are torch.float64"):
        dfm.evaluate_dfms(TinyNet().double(), images, labels, torch.ones(3, 8, 8, dtype=torch.bool), progress=False)


def test_a_nan_pixel_is_an_error_not_nan_maps():
    images, labels = data(8, 8)
    images[4, 1, 2, 3] = float("nan")
    images[6, 0, 0, 0] = float("inf")
    for call in (lambda: dfm.ablation_loss(TinyNet().double(), images, labels, 3, progress=False),
                 lambda: dfm.class_losses(TinyNet().double(), images, labels, 3),
                 lambda: dfm.evaluate_dfms(TinyNet().double(), images, labels, torch.ones(3, 8, 8, dtype=torch.bool))):
        with pytest.raises(ValueError, match=r"2 NaN or infinite values \(first in image 4\)"):
            call()


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_resume_gives_identical_maps(tmp_path):
    images, labels = data(8, 8)
    ckpt = tmp_path / "abl.npz"
    full = dfm.ablation_loss(TinyNet().double(), images, labels, 3, batch_size=18, device="cpu", progress=False)
    model = TinyNet().double()
    model.fail_after = 5  # each forward holds 2 units x 9 images; dies in the 6th chunk
    with pytest.raises(RuntimeError, match="simulated"):
        dfm.ablation_loss(model, images, labels, 3, batch_size=18, device="cpu", progress=False,
                          checkpoint=ckpt, checkpoint_every=0.0)
    partial = np.load(ckpt, allow_pickle=False)
    assert 0 < partial["done"].sum() < len(partial["done"])
    model.fail_after, model.calls = None, 0
    resumed = dfm.ablation_loss(model, images, labels, 3, batch_size=18, device="cpu", progress=False,
                                checkpoint=ckpt)
    assert model.calls == 17 - int(partial["done"].sum()) // 2  # only the missing chunks ran
    assert torch.equal(resumed, full)
    # a finished checkpoint answers without any forward pass
    model.fail_after, model.calls = 0, 0
    again = dfm.ablation_loss(model, images, labels, 3, device="cpu", progress=False, checkpoint=ckpt)
    assert torch.equal(again, full)


def test_damaged_checkpoint_is_set_aside_and_the_ablation_restarts(tmp_path):
    images, labels = data(8, 8)
    ckpt = tmp_path / "abl.npz"
    full = dfm.ablation_loss(TinyNet().double(), images, labels, 3, device="cpu", progress=False, checkpoint=ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:300])  # truncated: was a BadZipFile naming no file
    with pytest.warns(dfm.ArtefactWarning, match=r"abl\.npz is unusable .*moved to abl\.npz\.damaged"):
        again = dfm.ablation_loss(TinyNet().double(), images, labels, 3, device="cpu", progress=False, checkpoint=ckpt)
    assert torch.equal(again, full) and (tmp_path / "abl.npz.damaged").exists()


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_an_interruption_inside_a_chunk_saves_the_finished_units_and_resumes_exactly(tmp_path, error):
    images, labels = data(8, 8, n=18)
    ckpt = tmp_path / "abl.npz"
    full = dfm.ablation_loss(TinyNet().double(), images, labels, 3, batch_size=6, device="cpu", progress=False)

    model = TinyNet().double()
    real_forward = model.forward
    calls = {"n": 0}

    def forward(x):  # 3 groups of 6 images per unit: dies in the 2nd group of the 3rd unit
        calls["n"] += 1
        if calls["n"] == 8:
            raise error("stop")
        return real_forward(x)

    model.forward = forward
    with pytest.raises(error, match="stop"):  # no periodic save: only the save on interruption
        dfm.ablation_loss(model, images, labels, 3, batch_size=6, device="cpu", progress=False, checkpoint=ckpt,
                          checkpoint_every=1e9)
    partial = np.load(ckpt, allow_pickle=False)
    assert int(partial["done"].sum()) == 2  # the two finished units, not the half-done third
    model.forward = real_forward
    resumed = dfm.ablation_loss(model, images, labels, 3, batch_size=6, device="cpu", progress=False, checkpoint=ckpt)
    assert torch.equal(resumed, full)  # the half-done unit's partial sums were not kept


def test_mismatched_checkpoint_is_an_error_naming_what_differs(tmp_path):
    images, labels = data(8, 8)
    ckpt = tmp_path / "abl.npz"
    dfm.ablation_loss(TinyNet().double(), images, labels, 3, device="cpu", progress=False, checkpoint=ckpt)
    with pytest.raises(ValueError, match="model"):
        dfm.ablation_loss(TinyNet(seed=1).double(), images, labels, 3, device="cpu", progress=False, checkpoint=ckpt)
    with pytest.raises(ValueError, match="patch_size"):
        dfm.ablation_loss(TinyNet().double(), images, labels, 3, patch_size=2, device="cpu", progress=False,
                          checkpoint=ckpt)
    with pytest.raises(ValueError, match="images"):
        dfm.ablation_loss(TinyNet().double(), images + 1e-9, labels, 3, device="cpu", progress=False, checkpoint=ckpt)


# --------------------------------------------------------------------------- shortcut test
def direct_tpr_fpr(model, images, labels, dfms):
    """Slow reference: filter every image with each class's DFM, predict, count."""
    model.eval()
    out = []
    for i in range(dfms.shape[0]):
        with torch.no_grad():
            pred = model(filter_frequencies(images, dfms[i])).argmax(1)
        pos = labels == i
        out.append(((pred[pos] == i).double().mean().item(), (pred[~pos] == i).double().mean().item()))
    return out


def test_evaluate_dfms_matches_direct_counts_and_has_valid_intervals():
    model = TinyNet().double()
    images, labels = data(8, 8, n=30)
    maps = dfm.ablation_loss(model, images, labels, 3, device="cpu", progress=False)
    dfms = dfm.dominant_frequency_maps(maps, 0.2)
    table = dfm.evaluate_dfms(model, images, labels, dfms, batch_size=7, device="cpu", n_boot=200,
                              n_null=20, seed=0, progress=False)
    assert list(table.columns) == ["class", "baseline_acc", "tpr", "tpr_lo", "tpr_hi", "fpr", "fpr_lo",
                                   "fpr_hi", "null_tpr_p95", "null_tpr_mean", "shortcut", "paper_rule", "n_freq"]
    for i, (tpr, fpr) in enumerate(direct_tpr_fpr(model, images, labels, dfms)):
        row = table.iloc[i]
        assert row.tpr == pytest.approx(tpr) and row.fpr == pytest.approx(fpr)
        assert row.tpr_lo <= row.tpr <= row.tpr_hi and row.fpr_lo <= row.fpr <= row.fpr_hi
        assert row.n_freq == int(dfms[i].sum())
        assert row.shortcut == (row.tpr > row.null_tpr_p95) and row.paper_rule == (row.tpr >= 0.6)
    again = dfm.evaluate_dfms(model, images, labels, dfms, batch_size=30, device="cpu", n_boot=200,
                              n_null=20, seed=0, progress=False)
    assert again.equals(table)  # deterministic for a seed, whatever the batch size


def test_evaluate_with_full_masks_is_the_plain_confusion():
    model = TinyNet().double()
    images, labels = data(8, 8, n=30)
    full = torch.ones(3, 8, 8, dtype=torch.bool)
    table = dfm.evaluate_dfms(model, images, labels, full, device="cpu", n_boot=50, n_null=5, progress=False)
    with torch.no_grad():
        pred = model.eval()(images).argmax(1)
    for i in range(3):
        row = table.iloc[i]
        assert row.tpr == pytest.approx(row.baseline_acc)
        assert row.fpr == pytest.approx((pred[labels != i] == i).double().mean().item())
        assert row.null_tpr_p95 == pytest.approx(row.tpr) and not row.shortcut  # null = same mask


@pytest.mark.parametrize("h,w", [(8, 8), (9, 9), (16, 16)])
def test_null_masks_match_count_and_radial_profile(h, w):
    maps = torch.rand(1, h, w, generator=torch.Generator().manual_seed(3))
    d = dfm.dominant_frequency_maps(maps + conjugate_mirror(maps), 0.1)[0]
    d[h // 2, w // 2] = True  # include the self-conjugate DC
    null = _null_masks(d, 50, torch.Generator().manual_seed(0))
    bins = radial_bins(h, w).flatten()
    want = torch.bincount(bins[d.flatten()], minlength=int(bins.max()) + 1)
    for m in null:
        assert torch.equal(m, conjugate_mirror(m))
        assert torch.equal(torch.bincount(bins[m.flatten()], minlength=int(bins.max()) + 1), want)
    assert len({tuple(m.flatten().tolist()) for m in null}) > 1  # really random


# --------------------------------------------------------------------------- helpers
def test_iou_properties():
    gen = torch.Generator().manual_seed(4)
    a = torch.rand(3, 8, 8, generator=gen) > 0.5
    b = torch.rand(3, 8, 8, generator=gen) > 0.5
    assert torch.equal(dfm.iou(a, a), torch.ones(3, dtype=torch.float64))
    assert torch.equal(dfm.iou(a, b), dfm.iou(b, a))
    assert torch.equal(dfm.iou(a, ~a), torch.zeros(3, dtype=torch.float64))
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    assert dfm.iou(empty, empty).item() == 1.0


def test_save_and_load_round_trip_without_pickle(tmp_path):
    maps = torch.rand(3, 8, 8, dtype=torch.float64)
    dfms = {t: dfm.dominant_frequency_maps(maps, t) for t in (0.05, 0.2)}
    prov = {"run": "abc123", "images": "cifar10/test", "patch_size": 1}
    path = tmp_path / "dfm.npz"
    dfm.save_dfms(path, maps, dfms, prov)
    with np.load(path, allow_pickle=False) as z:  # must load with pickles disabled
        assert set(z.files) == {"loss_maps", "dfm_0", "dfm_1", "provenance"}
    saved = dfm.load_dfms(path)
    assert torch.equal(saved.loss_maps, maps)
    assert set(saved.dfms) == {0.05, 0.2} and all(torch.equal(saved.dfms[t], dfms[t]) for t in dfms)
    assert saved.provenance == {**prov, "thresholds": [0.05, 0.2]}
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(dfm.ArtefactDamaged, match=r"dfm\.npz is damaged: its sha256"):
        dfm.load_dfms(path)
    dfm.save_dfms(path, maps, dfms, prov)
    (tmp_path / "dfm.npz.sha256").unlink()  # a file of your own, without a digest: a clear error all the same
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(dfm.ArtefactDamaged, match=r"dfm\.npz is damaged: cannot be read \(BadZipFile"):
        dfm.load_dfms(path)


def test_config_defaults_are_the_papers_and_bad_values_are_named():
    cfg = dfm.DFMConfig()
    assert cfg.top == 0.05 and cfg.thresholds == (0.01, 0.05, 0.10, 0.20) and cfg.method == "exact"
    assert cfg.all_thresholds == (0.01, 0.05, 0.10, 0.20) and dfm.DFMConfig(top=0.3).all_thresholds[-1] == 0.3
    for bad, match in [({"method": "magic"}, "unknown DFM method 'magic'; valid: exact"), ({"top": 2}, "top must"),
                       ({"patch_size": 0}, "patch_size"), ({"n_null": -1}, "n_null"), ({"max_fpr": 1.5}, "max_fpr"),
                       ({"thresholds": ()}, "thresholds"), ({"options": {"k": object()}}, "JSON")]:
        with pytest.raises(ValueError, match=match):
            dfm.DFMConfig(**bad)
    with_k = dfm.DFMConfig(options={"k": 3})
    assert with_k.option == {"k": 3} and with_k.ranking_key() != cfg.ranking_key()
    assert hash(with_k) == hash(dfm.DFMConfig(options={"k": 3}))


def test_plot_functions_draw_every_class():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fslib.plot import dfm_examples, dfm_grid, loss_map_grid, tpr_fpr_bars

    maps = torch.rand(3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    d = dfm.dominant_frequency_maps(maps, 0.1)
    fig, axes = dfm_grid({"a": d, "b": ~d}, class_names=["x", "y", "z"])
    assert axes.shape == (2, 3) and axes[0, 1].get_title() == "y"
    assert np.array_equal(axes[0, 0].images[0].get_array(), d[0].numpy().astype(float))
    fig2, axes2 = loss_map_grid(maps, baseline=torch.zeros(3))
    fig3, axes3 = dfm_examples({"images": torch.rand(2, 3, 8, 8), "dfms": d[:2]})
    assert axes2.shape == (1, 3) and axes3.shape == (2, 3)
    images, labels = data(8, 8, n=12)
    table = dfm.evaluate_dfms(TinyNet().double(), images, labels, d, device="cpu", n_boot=20, n_null=3,
                              progress=False)
    fig4, ax4 = tpr_fpr_bars(table)
    assert len(ax4.patches) == 6  # a TPR and an FPR bar per class
    for f in (fig, fig2, fig3, fig4):
        plt.close(f)


# --------------------------------------------------------------------------- cached runs (chapter 4)
def FakeRun(path, model):
    """A subject with the CIFAR-10 normalisation and a fixed cache key, as a trained run has."""
    return Classifier(model, *normalization("cifar10"), class_names=("a", "b", "c"), key=Path(path).name)


def uint8_data(h, w, n=12, num_classes=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, h, w), generator=gen, dtype=torch.uint8)
    return images, torch.arange(n) % num_classes


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_run_dfms_computes_once_and_derives_new_thresholds_from_the_loss_maps(cache, tmp_path):
    model = TinyNet()
    run = FakeRun(tmp_path / "runs" / "tiny-cifar10-0123", model)
    images, labels = uint8_data(8, 8)
    first = dfm.run_dfms(run, images, labels, config=dfm.DFMConfig(thresholds=(0.05,)), device="cpu", progress=False)
    direct = dfm.ablation_loss(model, run.normalize(images), labels, 3, device="cpu", progress=False)
    assert torch.allclose(first.loss_maps, direct, atol=1e-6)
    assert first.provenance["forwards"] == 34 * 12 and first.provenance["patch_size"] == 1
    path = dfm.dfm_cache_path(run, images, labels, dfm.DFMConfig())
    assert path.exists() and not list(path.parent.glob("*.partial.npz"))
    model.fail_after, model.calls = 0, 0  # any forward from here on raises
    again = dfm.run_dfms(run, images, labels, config=dfm.DFMConfig(thresholds=(0.05,)), device="cpu", progress=False)
    assert torch.equal(again.loss_maps, first.loss_maps) and torch.equal(again.dfms[0.05], first.dfms[0.05])
    more = dfm.run_dfms(run, images, labels, config=dfm.DFMConfig(thresholds=(0.05, 0.2)), device="cpu",
                        progress=False)
    assert torch.equal(more.dfms[0.2], dfm.dominant_frequency_maps(first.loss_maps, 0.2))
    assert more.provenance["thresholds"] == [0.05, 0.2] and more.provenance["seconds"] == first.provenance["seconds"]
    assert model.calls == 0
    other = images.clone()
    other[0, 0, 0, 0] ^= 1  # one pixel differs: another key
    assert dfm.dfm_cache_path(run, other, labels) != path
    assert dfm.dfm_cache_path(run, images, labels, dfm.DFMConfig(patch_size=2)) != path
    assert dfm.dfm_cache_path(run, images, labels, dfm.DFMConfig(options={"k": 1})) != path
    with pytest.raises(TypeError, match="uint8"):
        dfm.run_dfms(run, images.float(), labels, progress=False)


def test_run_shortcut_test_is_evaluate_dfms_on_normalised_images_and_is_cached(cache, tmp_path):
    model = TinyNet()
    run = FakeRun(tmp_path / "runs" / "tiny-cifar10-0123", model)
    images, labels = uint8_data(8, 8, n=15)
    dfms = dfm.dominant_frequency_maps(torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(2)), 0.3)
    config = dfm.DFMConfig(n_boot=50, n_null=4, seed=1)
    kw = dict(config=config, device="cpu", progress=False)
    table = dfm.run_shortcut_test(run, images, labels, dfms, **kw)
    direct = dfm.evaluate_dfms(model, run.normalize(images), labels, dfms, n_boot=50, n_null=4, seed=1, device="cpu",
                               progress=False)
    pd_testing = pytest.importorskip("pandas.testing")
    pd_testing.assert_frame_equal(table, direct)
    model.fail_after, model.calls = 0, 0
    pd_testing.assert_frame_equal(dfm.run_shortcut_test(run, images, labels, dfms, **kw), direct)  # from the CSV
    sweep = dfm.shortcut_test_sweep(run, images, labels, {0.3: dfms}, **kw)
    assert list(sweep.columns[:2]) == ["top", "class"] and (sweep["top"] == 0.3).all()
    assert model.calls == 0
    with pytest.raises(RuntimeError, match="simulated"):  # another seed is another key: computed anew
        dfm.run_shortcut_test(run, images, labels, dfms, **{**kw, "config": config.with_(seed=2)})


def test_damaged_dfm_cache_and_test_table_are_computed_again(cache, tmp_path):
    model = TinyNet()
    run = FakeRun(tmp_path / "runs" / "tiny-cifar10-0123", model)
    images, labels = uint8_data(8, 8)
    config = dfm.DFMConfig(thresholds=(0.05,), n_boot=20, n_null=2)
    kw = dict(config=config, device="cpu", progress=False)
    first = dfm.run_dfms(run, images, labels, **kw)
    table = dfm.run_shortcut_test(run, images, labels, first.dfms[0.05], **kw)
    path = dfm.dfm_cache_path(run, images, labels, config)
    csv = next(path.parent.glob("*-test-*.csv"))
    path.write_bytes(path.read_bytes()[:400])
    csv.write_text(csv.read_text().replace("0.", "9.", 1))
    with pytest.warns(dfm.ArtefactWarning) as caught:
        again = dfm.run_dfms(run, images, labels, **kw)
        table_again = dfm.run_shortcut_test(run, images, labels, again.dfms[0.05], **kw)
    messages = " ".join(str(w.message) for w in caught)
    assert f"{path} is unusable" in messages and f"{csv} is unusable" in messages and "computed again" in messages
    assert torch.equal(again.loss_maps, first.loss_maps) and table_again.equals(table)
    assert not list(path.parent.glob("*.partial.npz*"))  # the partial ranking and its record are removed


def test_rank_score_split_is_disjoint_balanced_and_checked():
    labels = torch.arange(60) % 3
    rank, score = dfm.rank_score_split(labels, 7, 12, seed=0)
    assert not set(rank.tolist()) & set(score.tolist())
    assert torch.bincount(labels[rank]).tolist() == [3, 2, 2] and torch.bincount(labels[score]).tolist() == [4, 4, 4]
    assert not torch.equal(rank, dfm.rank_score_split(labels, 7, 12, seed=1)[0])
    dfm.rank_score_split(labels, 30, 30)  # exactly every image
    with pytest.raises(ValueError, match="class 0 has 20 images, fewer than the 21"):
        dfm.rank_score_split(labels, 30, 31)


def test_planted_overlap_counts_and_chance_levels():
    gen = torch.Generator().manual_seed(6)
    d = torch.rand(4, 8, 8, generator=gen) > 0.7
    t = torch.rand(4, 8, 8, generator=gen) > 0.6
    t[1] = d[1]  # a DFM equal to its target
    t[2] = False  # no target: NaN recall
    table = dfm.planted_overlap(d, t, ["a", "b", "c", "d"])
    assert table["hits"].tolist() == (d & t).flatten(1).sum(1).double().tolist()
    assert table.loc["b", "recall"] == 1.0 and table.loc["b", "precision"] == 1.0 and table.loc["b", "iou"] == 1.0
    assert np.isnan(table.loc["c", "recall"]) and table.loc["c", "precision"] == 0.0
    assert np.allclose(table["recall_chance"], d.flatten(1).double().mean(1).numpy())
    assert np.allclose(table["precision_chance"], t.flatten(1).double().mean(1).numpy())
    assert np.allclose(table["iou"].drop("c"), dfm.iou(d, t).numpy()[[0, 1, 3]])
    # a random mask's precision averages to the chance level
    random = torch.rand(2000, 8, 8, generator=gen) > 0.5
    tt = t[0].expand(2000, 8, 8)
    assert abs(dfm.planted_overlap(random, tt)["precision"].mean() - table.loc["a", "precision_chance"]) < 0.01




def test_dfm_profile_band_shares_radius_axes_and_reference():
    from fslib.spectral import band_masks

    b = band_masks(16, 16)
    axis = torch.zeros(16, 16, dtype=torch.bool)
    axis[8, 9] = axis[8, 7] = True
    d = torch.stack([b[0], b[3], axis])
    table = dfm.dfm_profile(d, ["low", "high", "axis"])
    assert table.loc["low", "B1"] == 1.0 and table.loc["high", "B4"] == 1.0
    assert np.allclose(table[["B1", "B2", "B3", "B4"]].sum(axis=1), 1.0)
    assert table.loc["axis", "axes"] == 1.0 and table.loc["axis", "mean_radius"] == 1.0
    assert bool(table.loc["low", "dc"]) and not bool(table.loc["high", "dc"])
    assert table.loc["high", "mean_radius"] > table.loc["low", "max_radius"]
    ref = table.loc["all positions"]
    assert ref["n_freq"] == 256 and np.allclose(ref[["B1", "B2", "B3", "B4"]].to_numpy(float),
                                                 b.flatten(1).double().mean(1).numpy())


def test_example_filtered_with_a_full_mask_returns_the_images():
    model = TinyNet()
    run = FakeRun("runs/tiny", model)
    images, labels = uint8_data(8, 8, n=12)
    full = torch.ones(3, 8, 8, dtype=torch.bool)
    out = dfm.example_filtered(run, images, labels, full, [2, 0], class_names=["a", "b", "c"])
    assert out["images"].shape == (2, 3, 8, 8) and out["dfms"].shape == (2, 8, 8)
    assert torch.allclose(out["filtered"], out["images"], atol=1e-5)  # all kept: the image itself
    with torch.no_grad():
        pred = model.eval()(run.normalize((out["images"] * 255).round().to(torch.uint8))).argmax(1)
    assert out["titles"] == [f"{n}\n-> {'abc'[int(p)]}" for n, p in zip("ca", pred)]
    with pytest.raises(ValueError, match="no image of class 5"):
        dfm.example_filtered(run, images, labels, torch.ones(6, 8, 8, dtype=torch.bool), [5])


def test_dfm_grid_targets_and_tpr_vs_threshold_plot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from fslib.plot import dfm_grid, tpr_vs_threshold
    from fslib.plot.dfm import TARGET_COLOURS

    d = torch.zeros(1, 4, 4, dtype=torch.bool)
    t = torch.zeros(1, 4, 4, dtype=torch.bool)
    d[0, 0, :2] = True
    t[0, 0, 1:3] = True
    fig, axes = dfm_grid(d, targets=t)
    rgb = axes[0, 0].images[0].get_array()
    assert tuple(rgb[0, 0]) == (1.0, 1.0, 1.0) and tuple(rgb[0, 1]) == TARGET_COLOURS["DFM and target"]
    assert tuple(rgb[0, 2]) == TARGET_COLOURS["target only"] and tuple(rgb[1, 1]) == (0.0, 0.0, 0.0)
    table = pd.DataFrame({"top": [0.01, 0.01, 0.05, 0.05], "class": [0, 1, 0, 1], "tpr": [0.1, 0.2, 0.5, 0.7],
                          "fpr": [0.0, 0.1, 0.1, 0.2], "null_tpr_p95": [0.05, 0.1, 0.2, 0.3]})
    fig2, ax = tpr_vs_threshold(table, class_names=["x", "y"])
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert np.allclose(lines["mean TPR"].get_ydata(), [0.15, 0.6]) and list(lines["x"].get_xdata()) == [1.0, 5.0]
    for f in (fig, fig2):
        plt.close(f)


def test_shortcut_analysis_ranks_and_scores_on_disjoint_images(cache, tmp_path):
    model = TinyNet()
    run = FakeRun(tmp_path / "runs" / "tiny-cifar10-0123", model)
    images, labels = uint8_data(8, 8, n=30)
    config = dfm.DFMConfig(top=0.1, thresholds=(0.2,), n_null=3, n_boot=20, seed=0)
    a = dfm.shortcut_analysis(run, images, labels, n_rank=9, n_score=12, config=config, device="cpu", progress=False)
    rank, score = dfm.rank_score_split(labels, 9, 12, 0)
    assert torch.equal(a.rank, rank) and torch.equal(a.score, score)
    assert set(a.saved.dfms) == {0.2, 0.1} and torch.equal(a.dfms, a.saved.dfms[0.1]) and a.top == 0.1
    loss = dfm.ablation_loss(model, run.normalize(images[rank]), labels[rank], 3, device="cpu", progress=False)
    assert torch.allclose(a.saved.loss_maps, loss, atol=1e-6)
    direct = dfm.evaluate_dfms(model, run.normalize(images[score]), labels[score], a.dfms, n_null=3, n_boot=20,
                               seed=0, device="cpu", progress=False)
    assert np.allclose(a.table["tpr"], direct["tpr"]) and np.allclose(a.table["fpr"], direct["fpr"])


def test_tpr_fpr_bars_draws_one_panel_per_table():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from fslib.plot import tpr_fpr_bars

    t = pd.DataFrame({"class": [0, 1], "tpr": [0.5, 0.9], "tpr_lo": [0.4, 0.8], "tpr_hi": [0.6, 1.0], "fpr": [0.1, 0.2],
                      "fpr_lo": [0.0, 0.1], "fpr_hi": [0.2, 0.3], "null_tpr_p95": [0.3, 0.95], "shortcut": [True, False]})
    fig, axes = tpr_fpr_bars({"a": t, "b": t.iloc[:1]})
    assert len(axes) == 2 and [a.get_title() for a in axes] == ["a", "b"]
    assert len(axes[0].patches) == 4 and len(axes[1].patches) == 2
    assert [h.get_height() for h in axes[0].patches[:2]] == [0.5, 0.9]
    plt.close(fig)


def test_loss_map_grid_symlog_keeps_the_data_and_one_scale():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import SymLogNorm

    from fslib.plot import loss_map_grid

    maps = torch.rand(2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    maps[0, 4, 4] = 100.0  # one dominant frequency
    fig, axes = loss_map_grid(maps, baseline=torch.tensor([0.5, 0.5]), symlog=True)
    norms = [a.images[0].norm for a in axes[0]]
    assert all(isinstance(n, SymLogNorm) for n in norms) and norms[0].vmax == norms[1].vmax == 99.5
    assert np.allclose(axes[0, 1].images[0].get_array(), maps[1].numpy() - 0.5)
    plt.close(fig)




def test_rank_set_does_not_depend_on_the_scoring_size():
    labels = torch.arange(300) % 10
    assert torch.equal(dfm.rank_score_split(labels, 50, 20, 3)[0], dfm.rank_score_split(labels, 50, 200, 3)[0])


def test_run_dfms_of_a_subject_finds_the_planted_frequencies_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path / "cache"))
    images, labels = uint8_set(seed=4)
    subject = probe_subject()
    config = dfm.DFMConfig(top=0.05, thresholds=(2 / 64,))
    saved = dfm.run_dfms(subject, images, labels, config=config, device="cpu", progress=False)
    for k, (r, s) in enumerate(FREQS):
        assert saved.dfms[2 / 64][k, r, s]  # the pair the class's logit reads is its top pair
    assert saved.dfms[2 / 64].sum().item() == 4 * 2
    monkeypatch.setitem(dfm.METHODS, "exact", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = dfm.run_dfms(subject, images, labels, config=dfm.DFMConfig(thresholds=(0.05,)), device="cpu",
                         progress=False)
    assert torch.equal(again.dfms[0.05], saved.dfms[0.05])
    assert again.provenance["counts"] == [3, 3, 3, 3] and again.provenance["method"] == "exact"
    with pytest.raises(TypeError, match="uint8"):
        dfm.run_dfms(subject, images.float(), labels)


def test_eval_block_restores_layout_hooks_and_mode():
    model = TinyNet().double().train()
    images, labels = data(8, 8, n=9)
    out = dfm.ablation_loss(model, images, labels, 3, device="cpu", progress=False)
    assert model.training and model.conv1.weight.is_contiguous() and not model._forward_pre_hooks
    assert (out - slow_ablation(model, images, labels, 3, 1)).abs().max() < 1e-10
    # a model already in channels-last keeps it, and gives the same maps
    cl = TinyNet().double().to(memory_format=torch.channels_last)
    again = dfm.ablation_loss(cl, images, labels, 3, device="cpu", progress=False)
    assert cl.conv1.weight.is_contiguous(memory_format=torch.channels_last) and not cl.conv1.weight.is_contiguous()
    assert (again - out).abs().max() < 1e-10


# --------------------------------------------------------------------------- split-half stability
def test_chunks_are_disjoint_balanced_and_chunk0_is_the_ranking_set():
    labels = torch.arange(60) % 3
    chunks = dfm.chunk_indices(labels, 4, 5, seed=3)
    flat = torch.cat(chunks)
    assert len(flat) == len(set(flat.tolist())) == 60
    assert all(torch.equal(torch.bincount(labels[c], minlength=3), torch.tensor([4, 4, 4])) for c in chunks)
    for n_score in (0, 7):
        assert torch.equal(chunks[0], dfm.rank_score_split(labels, 12, n_score, seed=3)[0])
    with pytest.raises(ValueError, match="class 0 has 20 images, fewer than the 24"):
        dfm.chunk_indices(labels, 4, 6)


def test_the_mean_of_chunk_maps_is_the_map_of_their_union(cache, tmp_path):
    model = TinyNet()
    run = FakeRun(tmp_path / "runs" / "tiny-cifar10-0456", model)
    images, labels = uint8_data(6, 6, n=18)
    chunks = dfm.chunk_indices(labels, 2, 3)
    maps = dfm.chunk_loss_maps(run, images, labels, chunks, device="cpu", progress=False)
    assert maps.shape == (3, 3, 6, 6)
    union = torch.cat(chunks[:2])
    direct = dfm.ablation_loss(model, run.normalize(images[union]), labels[union], 3, device="cpu", progress=False)
    assert torch.allclose(maps[:2].mean(0), direct, atol=1e-6)


def test_spearman_matches_a_direct_rank_correlation():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 30, generator=g, dtype=torch.float64), torch.randn(4, 30, generator=g, dtype=torch.float64)
    for i in range(4):
        ra, rb = np.argsort(np.argsort(a[i].numpy())), np.argsort(np.argsort(b[i].numpy()))
        assert float(dfm.spearman(a, b)[i]) == pytest.approx(np.corrcoef(ra, rb)[0, 1])
    assert torch.allclose(dfm.spearman(a, 2 * a + 1), torch.ones(4, dtype=torch.float64))


def test_split_half_agrees_perfectly_on_identical_chunks_and_less_on_noise():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(1, 2, 8, 8, generator=g, dtype=torch.float64)
    base = (base + base.flip(-1).flip(-2)) / 2  # a map has one value per conjugate pair (roughly)
    same = dfm.split_half(base.repeat(4, 1, 1, 1), [1, 2], n_splits=3, top=0.2)
    assert len(same) == 2 * 3 * 2 and (same["iou"] == 1).all() and np.allclose(same["spearman"], 1)
    noisy = base + 3 * torch.randn(6, 2, 8, 8, generator=g, dtype=torch.float64)
    table = dfm.split_half(noisy, [1, 3], n_splits=20, top=0.2)
    summary = dfm.split_half_summary(table, per_class=10)
    assert list(summary.index) == [10, 30] and (summary["splits"] == 20).all()
    assert summary.loc[30, "spearman"] > summary.loc[10, "spearman"]  # averaging more chunks removes noise
    assert (summary["iou_low"] <= summary["iou"]).all() and (summary["iou"] <= summary["iou_high"]).all()
    with pytest.raises(ValueError, match="chunks per half must lie in 1..3"):
        dfm.split_half(noisy, [4])


def test_split_half_curves_draws_both_measures():
    import matplotlib.pyplot as plt
    import pandas as pd

    from fslib.plot import split_half_curves
    summary = pd.DataFrame({"iou": [0.2, 0.4], "iou_low": [0.1, 0.3], "iou_high": [0.3, 0.5], "spearman": [0.3, 0.6],
                            "spearman_low": [0.2, 0.5], "spearman_high": [0.4, 0.7]},
                           index=pd.Index([10, 20], name="per_class"))
    fig, ax = split_half_curves(summary)
    assert len(ax.lines) == 2 and list(ax.get_xticks()) == [10, 20]
    plt.close(fig)
