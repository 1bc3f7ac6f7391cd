"""fslib.train: config validation and a deterministic training loop (tiny models, tiny data)."""

import json

import pytest
import torch
from toy_data import toy_loader, toy_set

import fslib
from fslib import augment as aug
from fslib import data, runs, synthetic, train
from fslib.inference import evaluate
from fslib.tracking import track_set

TINY = dict(dataset="cifar10", model="resnet18", width=0.0625, epochs=2, batch_size=16, scheduler="onecycle", lr=0.05)


# --------------------------------------------------------------------------- config
def test_defaults_are_the_paper_recipe_and_json_roundtrip():
    cfg = train.TrainConfig()
    assert (cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay, cfg.batch_size) == (0.01, 0.9, True, 1e-4, 64)
    assert (cfg.scheduler, cfg.plateau_factor, cfg.val_fraction, cfg.augment, cfg.pad) == ("plateau", 0.1, 0.1, "official", 4)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert train.TrainConfig.from_dict(d) == cfg


def test_lists_become_tuples_so_configs_compare_equal():
    a = train.TrainConfig(track_sets=["test", "bandstop:1,2"], track_every=5, crop_scale=[0.5, 1.0])
    b = train.TrainConfig(track_sets=("test", "bandstop:1,2"), track_every=5, crop_scale=(0.5, 1.0))
    assert a == b and hash(a) == hash(b)


@pytest.mark.parametrize("kw, match", [
    (dict(model="resnet19"), "resnet18"),
    (dict(dataset="cifar100"), "cifar10"),
    (dict(scheduler="step"), "plateau, onecycle"),
    (dict(augment="crop"), "official, flipcrop, none"),
    (dict(extra_augment="mixup"), "autoaugment, augmix"),
    (dict(track_sets=("bandstop:5",), track_every=1), "bandstop"),
    (dict(track_every=5), "track_sets"),
    (dict(lr=-1.0), "lr=-1.0"),
    (dict(scheduler="plateau", val_fraction=0.0), "val_fraction"),
    (dict(crop_scale=(0.9, 0.5)), "crop_scale"),
    (dict(precision="fp16"), "fp32, bf16"),
])
def test_bad_values_fail_naming_the_valid_ones(kw, match):
    with pytest.raises(ValueError, match=match):
        train.TrainConfig(**kw)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="epochz"):
        train.TrainConfig.from_dict({"epochz": 3})


# --------------------------------------------------------------------------- the training loop
def test_load_data_makes_a_seeded_disjoint_90_10_split():
    cfg = train.TrainConfig(**TINY)
    d = train.load_data(cfg, toy_loader)
    assert len(d.val) == round(0.1 * 96) and len(d.train) + len(d.val) == 96
    assert not set(d.val.extra["index"].tolist()) & set(d.train.extra["index"].tolist())
    again = train.load_data(cfg, toy_loader)
    other = train.load_data(train.TrainConfig(**{**TINY, "seed": 1}), toy_loader)
    assert torch.equal(again.val.extra["index"], d.val.extra["index"])
    assert not torch.equal(other.val.extra["index"], d.val.extra["index"])


def test_same_seed_gives_the_same_weights_and_history():
    def fit(seed):
        cfg = train.TrainConfig(**{**TINY, "seed": seed, "augment": "official"})
        return train.Trainer(cfg, train.load_data(cfg, toy_loader), "cpu", progress=False).fit()

    state = torch.get_rng_state()
    a, b, c = fit(0), fit(0), fit(1)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's global RNG is untouched
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    timing = ["seconds", "cpu_seconds"]
    assert a.history_frame().drop(columns=timing).equals(b.history_frame().drop(columns=timing))
    assert not torch.equal(a.model.classifier.weight, c.model.classifier.weight)
    assert not a.model.training and a.step == 2 * (86 // 16)


def test_bf16_training_is_deterministic_and_really_runs_in_bf16():
    def fit(precision):
        cfg = train.TrainConfig(**{**TINY, "precision": precision, "channels_last": True,
                                   "track_every": 4, "track_until": 8, "track_sets": ("test",)})
        return train.Trainer(cfg, train.load_data(cfg, toy_loader), "cpu", progress=False).fit()

    a, b, f = fit("bf16"), fit("bf16"), fit("fp32")
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    assert a.recorder.frame().equals(b.recorder.frame())
    wa, wf = a.model.classifier.weight, f.model.classifier.weight
    assert wa.dtype == torch.float32  # autocast: the weights stay fp32
    assert not torch.equal(wa, wf)    # ... but the steps ran in bf16 (closeness: the predict test below)


def test_max_iters_stops_mid_epoch_and_hooks_see_every_step():
    seen = []
    cfg = train.TrainConfig(**{**TINY, "max_iters": 7, "epochs": 5, "track_every": 3, "track_until": 6,
                                "track_sets": ("test", "bandstop:1")})
    t = train.Trainer(cfg, train.load_data(cfg, toy_loader), "cpu", hooks=[lambda s, m: seen.append(s)], progress=False)
    t.fit()
    assert t.step == 7 and seen == list(range(8)) and len(t.history) == 2
    tracking = t.recorder.frame()
    assert sorted(tracking.iteration.unique()) == [0, 3, 6] and set(tracking.set) == {"test", "bandstop:1"}


@pytest.mark.slow
def test_training_learns_an_easy_task():
    cfg = train.TrainConfig(**{**TINY, "epochs": 6, "augment": "flipcrop"})
    t = train.Trainer(cfg, train.load_data(cfg, toy_loader), "cpu", progress=False).fit()
    d = train.load_data(cfg, toy_loader)
    r = evaluate(t.model, d.test.images, d.test.labels, 4, device="cpu", mean=t.mean, std=t.std)
    assert r["acc"] > 0.6  # chance is 0.25; the red level separates the classes


def test_dropout_model_is_deterministic_too():
    def loader(name, split, n=None, seed=0, progress=True, **kw):
        return toy_set(64 if split == "train" else 16, split, size=32)

    cfg = train.TrainConfig(**{**TINY, "model": "alexnet", "epochs": 1, "width": 0.0625})
    runs = [train.Trainer(cfg, train.load_data(cfg, loader), "cpu", progress=False).fit() for _ in range(2)]
    a, b = (torch.cat([p.flatten() for p in t.model.parameters()]) for t in runs)
    assert torch.equal(a, b)


def test_later_fields_stay_out_of_the_hash_until_set():
    base = train.TrainConfig(**TINY)
    assert not set(base.to_dict()) & {"objective", "init_from", "trainable", "input_augment"}
    custom = train.TrainConfig(**TINY, objective_options={"w": 2}, trainable=["layer1"])
    assert custom.to_dict()["objective_options"] == [["w", 2]] and custom.to_dict()["trainable"] == ["layer1"]
    assert train.TrainConfig.from_dict(custom.to_dict()) == custom
    for kw, match in [({"objective": "hinge"}, "unknown objective 'hinge'; valid: ce"),
                      ({"input_augment": "mixup"}, "unknown input_augment 'mixup'; valid: none"),
                      ({"reinit": ("linear",)}, "reinit needs init_from")]:
        with pytest.raises(ValueError, match=match):
            train.TrainConfig(**TINY, **kw)


def test_registered_objective_and_input_augmentation_drive_the_step():
    seen = {}

    def doubled(model, x, y, cfg, generator):
        logits = model(x)
        seen["options"] = dict(cfg.objective_options)
        return 2 * torch.nn.functional.cross_entropy(logits, y), logits

    def zero_red(x, labels, generator, channel=0):
        seen["channel"] = channel
        return x.index_fill(1, torch.tensor([channel]), 0.0)

    train.register_objective("_doubled_test", doubled)
    aug.register_input_augment("_zero_test", zero_red)
    try:
        cfg = train.TrainConfig(**{**TINY, "epochs": 1}, objective="_doubled_test", objective_options={"k": 1},
                                input_augment="_zero_test", input_augment_options={"channel": 2})
        t = train.Trainer(cfg, train.load_data(cfg, toy_loader), "cpu", progress=False).fit()
        assert seen == {"options": {"k": 1}, "channel": 2} and len(t.history) == 1
        with pytest.raises(ValueError, match="already registered"):
            train.register_objective("_doubled_test", lambda *a: a)
    finally:
        del train.OBJECTIVES["_doubled_test"], aug.INPUT_AUGMENTS["_zero_test"]


def test_dataset_options_are_spelled_out_in_the_hash_and_refused_where_unknown():
    skewed = train.TrainConfig(**{**TINY, "dataset": "cifar10_skew"})
    options = dict(skewed.dataset_options)
    assert options["correlation"] == 0.95 and len(options) >= 5  # every setting, defaults included
    assert skewed.to_dict()["dataset_options"] == [list(p) for p in skewed.dataset_options]
    assert train.TrainConfig.from_dict(json.loads(json.dumps(skewed.to_dict()))) == skewed
    other = train.TrainConfig(**{**TINY, "dataset": "cifar10_skew"}, dataset_options={"correlation": 0.5})
    assert other != skewed and dict(other.dataset_options)["amplitude"] == options["amplitude"]
    assert "dataset_options" not in train.TrainConfig(**TINY).to_dict()  # the clean runs keep their hashes
    with pytest.raises(ValueError, match="takes no options"):
        train.TrainConfig(**TINY, dataset_options={"correlation": 0.5})
    with pytest.raises(ValueError, match="unknown option.*valid: amplitude, correlation"):
        train.TrainConfig(**{**TINY, "dataset": "cifar10_skew"}, dataset_options={"corr": 0.5})


# The book's default Syn_B4 run (fslib.recipes.synthetic("syn_b4")) as it was hashed before synthetic
# sets took options: key e3b15091dc0473a4 under fslib 0.1.0, the folder its cached run lives in.
SYN_B4_RUN = {
    "dataset": "syn_b4", "model": "resnet18", "width": 0.25, "epochs": 4, "max_iters": 500, "batch_size": 64, "lr": 0.01,
    "momentum": 0.9, "nesterov": True, "weight_decay": 0.0001, "scheduler": "plateau", "plateau_factor": 0.1,
    "plateau_patience": 10, "label_smoothing": 0.0, "augment": "official", "pad": 4, "crop_scale": [0.08, 1.0],
    "extra_augment": "none", "extra_augment_chunk": 1, "channels_last": True, "precision": "bf16", "n_train": None,
    "n_test": 200, "resolution": None, "data_seed": 0, "val_fraction": 0.1, "seed": 0, "track_every": 20,
    "track_until": 500, "track_sets": ["test", "bandpass:1", "bandpass:2", "bandpass:3", "bandpass:4", "bandstop:1,2",
                                       "bandstop:1,3", "bandstop:1,4", "bandstop:2,3", "bandstop:2,4", "bandstop:3,4"]}


def test_a_default_synthetic_run_keeps_its_hash_and_a_changed_generator_gets_another(monkeypatch):
    monkeypatch.setattr(fslib, "__version__", "0.1.0")
    for options in ((), {}, {"noise_std": 0.005}, [("c2_special_fraction", 0.4)]):  # all the default generator
        cfg = train.TrainConfig(**SYN_B4_RUN, dataset_options=options)
        assert cfg.dataset_options == () and "dataset_options" not in cfg.to_dict()
        assert runs.run_hash(cfg) == "e3b15091dc0473a4"
    keys = {runs.run_hash(train.TrainConfig(**SYN_B4_RUN, dataset_options=o))
            for o in ({"noise_std": 0.02}, {"noise_std": 0.01}, {"c2_special_fraction": 0.7},
                      {"c2_special_fraction": 0.7, "noise_std": 0.02})}
    assert len(keys) == 4 and "e3b15091dc0473a4" not in keys
    noisy = train.TrainConfig(**SYN_B4_RUN, dataset_options={"noise_std": 0.02})
    assert noisy.to_dict()["dataset_options"] == [["noise_std", 0.02]]
    assert train.TrainConfig.from_dict(json.loads(json.dumps(noisy.to_dict()))) == noisy
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['noise'\] of 'syn_b4'; valid: c2_special_fraction"):
        train.TrainConfig(**SYN_B4_RUN, dataset_options={"noise": 0.02})


def test_load_data_of_a_synthetic_run_uses_its_generator_options(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path))
    kw = dict(dataset="syn_b2", n_train=64, n_test=16, batch_size=16, val_fraction=0.25)
    plain = train.load_data(train.TrainConfig(**kw), progress=False)
    noisy = train.load_data(train.TrainConfig(**kw, dataset_options={"noise_std": 0.02}), progress=False)
    want = data.load("syn_b2", "test", n=16, options={"noise_std": 0.02}, progress=False)
    assert torch.equal(noisy.test.images, want.images) and not torch.equal(noisy.test.images, plain.test.images)
    full = synthetic.load("syn_b2", "train", 64, config=synthetic.SyntheticConfig(noise_std=0.02))[0]
    assert torch.equal(noisy.train.images, full[noisy.train.extra["index"]])
    # the training loop's tracking sets (Trainer: track_set(name, data.test)) come from the same generator
    variant = synthetic.variant("syn_b2", "bandstop", (1, 2), "test", 16, config=synthetic.SyntheticConfig(noise_std=0.02))
    assert torch.equal(track_set("bandstop:1,2", noisy.test), variant[0])
    assert not torch.equal(track_set("bandstop:1,2", plain.test), variant[0])


def test_lr_scale_multiplies_the_first_step_of_the_scaled_blocks_only():
    """Plain SGD (no momentum, no decay, constant lr): the first update is -lr x gradient, so a
    block at lr x 0.25 moves exactly a quarter as far from the same start, and the rest the same."""
    base = {**TINY, "epochs": 1, "max_iters": 1, "scheduler": "constant", "momentum": 0.0, "nesterov": False,
            "weight_decay": 0.0, "augment": "none", "val_fraction": 0.0}
    steps = {}
    for scale in ((), (("layer2", 0.25), ("classifier", 0.5))):
        cfg = train.TrainConfig(**base, lr_scale=scale)
        t = train.Trainer(cfg, train.load_data(cfg, toy_loader), "cpu", progress=False)
        before = {k: v.clone() for k, v in t.model.named_parameters()}
        t.fit()
        steps[scale] = {k: v.detach() - before[k] for k, v in t.model.named_parameters()}
        assert [g["lr"] for g in t.optimizer.param_groups] == ([0.05] if not scale else [0.05, 0.0125, 0.025])
    plain, scaled = steps.values()
    for k in plain:
        factor = 0.25 if k.startswith("layer2.") else 0.5 if k.startswith("classifier.") else 1.0
        assert torch.allclose(scaled[k], factor * plain[k], rtol=1e-3, atol=1e-7), k  # fp32 rounding of w + step
    assert any(plain[k].abs().sum() > 0 for k in plain if k.startswith("layer2."))
    with pytest.raises(ValueError, match="lr_scale"):
        train.TrainConfig(**TINY, lr_scale={"layer2": 0.0})
    with pytest.raises(ValueError, match="overlap"):
        cfg = train.TrainConfig(**base, lr_scale={"layer2": 0.5, "layer2.0": 0.1})
        train.Trainer(cfg, train.load_data(cfg, toy_loader), "cpu", progress=False)
