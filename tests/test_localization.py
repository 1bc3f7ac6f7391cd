"""fslib.localization: blocks, counterfactual block retraining, contributions, probes (tiny models, toy data)."""

import dataclasses

import pandas as pd
import pytest
import torch
from toy_data import toy_set

from fslib import localization as loc
from fslib import models, runs, train
from fslib.data import skew

# 8x8 toy images have few frequencies: a ring that holds 4 classes x 1 grating, and a strong pattern
OPTIONS = {"min_radius": 1.0, "max_radius": 4.3, "n_freq": 1, "amplitude": 0.2}
TINY = dict(model="resnet18", width=0.0625, epochs=2, batch_size=16, scheduler="onecycle", lr=0.05, val_fraction=0.0)
TUNE = dict(epochs=1, lr=0.05, scheduler="onecycle")


def loader(name, split, n=None, seed=0, progress=True, options=None, **kw):
    base = toy_set(96 if split == "train" else 48, split)
    return skew.derive_split(base, name, options or (), seed=seed) if name in skew.SKEWED else base


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def pair(**options):
    clean = runs.get_or_train(train.TrainConfig(dataset="cifar10", **TINY), "cpu", False, loader=loader)
    cfg = train.TrainConfig(dataset="cifar10_skew", dataset_options={**OPTIONS, **options}, **TINY)
    return clean, runs.get_or_train(cfg, "cpu", False, loader=loader)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "vgg16"])
def test_blocks_partition_every_parameter_in_depth_order(arch):
    names = list(models.build(arch, 10, width=0.0625).state_dict())
    table = loc.blocks(arch)
    owners = {n: [b for b, ps in table.items() if any(n == p or n.startswith(p + ".") for p in ps)] for n in names}
    assert all(len(o) == 1 for o in owners.values()), {n: o for n, o in owners.items() if len(o) != 1}
    assert list(table)[0] in ("stem", "stage1") and list(table)[-1] == "head"
    with pytest.raises(ValueError, match="valid: stem, layer1"):
        loc.prefixes("resnet18", ["layer9"])


def test_retraining_one_block_leaves_every_other_weight_and_statistic_bit_identical(cache):
    clean, skewed = pair()
    tuned = runs.get_or_train(loc.retrain_config(clean, skewed.config, "layer2", **TUNE), "cpu", False, loader=loader)
    assert tuned.config.dataset == "cifar10_skew" and tuned.config.init_from == clean.cache_key
    before, after = clean.model.state_dict(), tuned.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("layer2.") for k in changed)
    assert any("running_mean" in k for k in changed)  # the retrained block's BatchNorm adapts to the new data


def test_without_a_skew_the_encode_retraining_is_the_control_bit_for_bit(cache):
    """Correlation 0 plants nothing: retraining a block of the clean model on the "skewed" data
    must then be the same computation as retraining it on the clean data (same images, order,
    seed), so every contribution is exactly 0. With correlation 1 it is not."""
    for correlation, same in ((0.0, True), (1.0, False)):
        clean, skewed = pair(correlation=correlation)
        a, b = clean.model.state_dict(), skewed.model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a) == same  # no skew: the "skewed" model is the clean one
        got = loc.counterfactual_runs(clean, skewed, ["layer1"], ("encode", "clean-clean"), "cpu", loader=loader, **TUNE)
        a, b = (got[d, "layer1"].model.state_dict() for d in ("encode", "clean-clean"))
        assert all(torch.equal(a[k], b[k]) for k in a) == same
    sets = loc.evaluation_sets("cifar10_skew", skewed.config.dataset_options, None, loader=loader)
    subjects = {(0, "clean", ""): clean, (0, "skewed", ""): skewed, **{(0, d, b): r for (d, b), r in got.items()}}
    table = loc.accuracy_table(subjects, sets, "cpu").rename(columns={0: "seed", 1: "direction", 2: "block"})
    assert set(table.columns) >= {"clean", "aligned", "conflicting", "follows_pattern"}
    assert ((table["follows_pattern"] + table["conflicting"]) <= 1).all()  # the pattern's class is never the label
    again = loc.accuracy_table(subjects, sets, "cpu").rename(columns={0: "seed", 1: "direction", 2: "block"})
    pd.testing.assert_frame_equal(table, again)  # from the cache


def test_contribution_shares_follow_the_definition():
    t = pd.DataFrame({"seed": [0, 0, 0, 0, 1, 1, 1],
                      "direction": ["clean", "skewed", "encode", "repair", "clean", "skewed", "encode"],
                      "block": ["", "", "stem", "head", "", "", "stem"], "conflicting": [0.6, 0.2, 0.5, 0.5, 0.5, 0.5, 0.4]})
    c = loc.layer_contributions(t, "conflicting")
    assert c["share"].iloc[:2].round(6).tolist() == [0.25, 0.75] and c["drop"].iloc[0] == pytest.approx(0.4)
    assert pd.isna(c["share"].iloc[2])  # no drop in seed 1: no share


def test_linear_probe_reads_a_linear_code_and_not_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(600) % 3
    x = torch.randn(600, 8, generator=g)
    coded = x.clone()
    coded[:, 0] += 4.0 * y
    assert loc.linear_probe(coded, y, 300) > 0.95
    assert loc.linear_probe(x, y, 300) < 0.45  # chance is 1/3
    with pytest.raises(ValueError, match="n_fit"):
        loc.linear_probe(x, y, 600)


@pytest.mark.parametrize("arch, dims", [("resnet18", [4, 4, 8, 16, 32, 10]), ("vgg16", [4, 8, 16, 32, 32, 10])])
def test_block_features_are_pooled_block_outputs_and_the_head_gives_the_logits(arch, dims):
    model = models.build(arch, 10, width=0.0625).eval()
    x = torch.randn(5, 3, 32, 32)
    feats = loc.block_features(model, arch, x, device="cpu")
    assert list(feats) == list(loc.blocks(arch)) and [f.shape[1] for f in feats.values()] == dims
    with torch.no_grad():
        assert torch.allclose(feats["head"], model(x), atol=1e-5)
    assert bool((feats[list(feats)[0]] >= 0).all())  # the stem after its ReLU


def test_probe_table_is_cached_and_mitigations_slow_or_freeze_the_chosen_blocks(cache, monkeypatch):
    model = loc.initial_model(train.TrainConfig(dataset="cifar10", **TINY))
    images = toy_set(40, "test", size=32, num_classes=4).images
    tasks = {"class": (images, torch.arange(40) % 4)}
    first = loc.probe_table({"init": (model, "resnet18", "toy-init")}, tasks, device="cpu", steps=5)
    assert list(first["block"]) == list(loc.blocks("resnet18")) and first["accuracy"].between(0, 1).all()
    monkeypatch.setattr(loc, "linear_probe", lambda *a, **k: pytest.fail("recomputed a cached probe"))
    pd.testing.assert_frame_equal(first, loc.probe_table({"init": (model, "resnet18", "toy-init")}, tasks, device="cpu", steps=5))
    cfg = train.TrainConfig(dataset="cifar10_skew", **TINY)
    found = loc.mitigation_configs(cfg, {"shallow": ["stem", "layer1"]}, factor=0.1)
    assert found["slow shallow"].lr_scale == (("conv1", 0.1), ("bn1", 0.1), ("layer1", 0.1))
    assert found["freeze shallow"].trainable == ("layer2", "layer3", "layer4", "classifier")
    assert dataclasses.replace(found["slow shallow"], lr_scale=()) == cfg


def test_plots_draw_one_line_per_direction_and_model():
    import matplotlib

    matplotlib.use("Agg")
    from fslib import plot

    contrib = pd.DataFrame({"metric": ["clean"] * 4 + ["conflicting"] * 4, "seed": [0, 1] * 4,
                            "direction": (["encode"] * 2 + ["repair"] * 2) * 2, "block": ["stem"] * 8,
                            "share": [0.1, 0.2, 0.3, 0.4] * 2})
    fig, axes = plot.layer_curves(contrib, blocks=["stem", "all"])
    assert axes.shape == (1, 2) and len(axes[0, 0].get_lines()) == 2 + 2  # two reference lines, two directions
    probes = pd.DataFrame({"model": ["clean", "skewed"] * 2, "seed": [0, 0, 0, 0], "task": ["t"] * 4,
                           "block": ["stem", "stem", "head", "head"], "depth": [0, 0, 1, 1], "accuracy": [0.5] * 4})
    fig, axes = plot.probe_curves(probes, chance={"t": 0.1})
    assert [len(line.get_xdata()) for line in axes[0, 0].get_lines()][:2] == [2, 2]
