"""The shared training recipes: valid configs at every scale, one baseline shared by the
chapters, the paper scale equal to the paper's recipe, and the default scale's budget choices."""

import json
from pathlib import Path

import pytest

from fslib import augment, models, recipes, train
from fslib.runs import run_hash

ARCHS = [("resnet18", "none"), ("resnet50", "none"), ("vgg16", "none"),
         ("resnet18", "autoaugment"), ("resnet18", "augmix"), ("resnet18", "ampswap")]


@pytest.mark.parametrize("scale", recipes.SCALES)
def test_every_recipe_is_a_valid_config(scale):
    for d in ("syn_b1", "syn_b4"):
        assert recipes.synthetic(d, seed=2, scale=scale).seed == 2
    for m, a in ARCHS:
        cfg = recipes.cifar10(m, a, scale=scale)
        assert (cfg.model, cfg.extra_augment, cfg.dataset) == (m, a, "cifar10")
    assert recipes.imagenette(scale=scale).dataset == "imagenette"


def test_the_baseline_is_one_config_for_every_chapter():
    assert recipes.cifar10() == recipes.cifar10("resnet18", "none", seed=0, scale="default")
    base = recipes.cifar10()
    assert base.track_sets == ("test",) and base.track_until == 1200  # chapter 2's early dynamics
    for scale in recipes.SCALES:                                        # only the baseline tracks
        assert recipes.cifar10(scale=scale).track_every > 0
        for model, aug in ARCHS:
            if (model, aug) != ("resnet18", "none"):
                cfg = recipes.cifar10(model, aug, scale=scale)
                assert (cfg.track_every, cfg.track_until, cfg.track_sets) == (0, 0, ()), (model, aug, scale)


def test_paper_scale_keeps_the_papers_recipe():
    paper = train.TrainConfig()
    for cfg in [recipes.cifar10(m, a, scale="paper") for m, a in ARCHS] + [recipes.synthetic("syn_b2", scale="paper")]:
        assert (cfg.lr, cfg.scheduler, cfg.batch_size, cfg.augment, cfg.precision, cfg.width) == \
            (paper.lr, paper.scheduler, paper.batch_size, paper.augment, "fp32", 1.0)
    assert recipes.cifar10("resnet18", "augmix", scale="paper").extra_augment_chunk == 1  # per image, as PIL


def test_default_scale_budget_choices():
    base = recipes.cifar10()
    assert (base.precision, base.channels_last, base.epochs) == ("bf16", True, 8)
    others = [recipes.cifar10(m, a) for m, a in ARCHS[1:]]
    assert [c.epochs for c in others] == [8, 6, 6, 6, 6]  # ResNet50 needs 8 for 75 %
    assert all(c.precision == "bf16" for c in others)
    assert [c.extra_augment_chunk for c in others] == [1, 1, 1, 8, 1]  # only AugMix draws per 8 images
    widths = {c.model: c.width for c in [base] + others}
    assert widths == {"resnet18": 0.25, "resnet50": 0.125, "vgg16": 0.25}
    syn = recipes.synthetic("syn_b3")
    assert syn.max_iters == syn.track_until == 500  # the paper's window, no more


def test_describe_lists_only_departures_and_unknown_scale_fails():
    d = recipes.describe(recipes.cifar10())
    assert d["precision"] == "bf16" and d["scheduler"] == "onecycle" and "momentum" not in d
    assert recipes.describe(recipes.cifar10(scale="paper")) == {"track_every": 50, "track_until": 1200, "track_sets": ["test"]}
    with pytest.raises(ValueError, match="smoke, default, paper"):
        recipes.cifar10(scale="fast")


def test_every_recipe_keeps_its_run_hash():
    """Cached models of a built book are reused, not retrained: every recipe config of every
    scale hashes as it did when this table was recorded (before the library was reshaped)."""
    recorded = json.loads((Path(__file__).parent / "data" / "recipe_hashes.json").read_text())
    now = {}
    for scale in recipes.SCALES:
        for d in ("syn_b1", "syn_b2", "syn_b3", "syn_b4"):
            for seed in range(5):
                now[f"synthetic/{d}/seed{seed}/{scale}"] = run_hash(recipes.synthetic(d, seed=seed, scale=scale))
        for m in sorted(models.MODELS):
            for e in sorted(augment.EXTRA_AUGMENTS):
                now[f"cifar10/{m}/{e}/seed0/{scale}"] = run_hash(recipes.cifar10(m, e, seed=0, scale=scale))
            now[f"imagenette/{m}/seed0/{scale}"] = run_hash(recipes.imagenette(m, seed=0, scale=scale))
    changed = {k: (v, now.get(k)) for k, v in recorded.items() if now.get(k) != v}
    assert not changed, f"{len(changed)} recipe hashes changed (cached runs would retrain): {changed}"
    assert len(recorded) == 150


@pytest.mark.parametrize("scale", recipes.SCALES)
def test_localization_pair_differs_only_in_the_data(scale):
    for model in ("resnet18", "vgg16"):
        clean, skewed = recipes.localization(False, model, 1, scale), recipes.localization(True, model, 1, scale)
        assert (clean.dataset, skewed.dataset, clean.seed) == ("cifar10", "cifar10_skew", 1)
        a, b = clean.to_dict(), skewed.to_dict()
        assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} == {"dataset", "dataset_options"}
        tuned = train.TrainConfig(**{**a, **recipes.retraining(scale)})
        assert tuned.epochs >= 1 and tuned.lr > 0
    assert dict(recipes.localization(True, skew_options={"correlation": 0.8}).dataset_options)["correlation"] == 0.8
    with pytest.raises(ValueError, match="clean model"):
        recipes.localization(False, skew_options={"correlation": 0.8})
