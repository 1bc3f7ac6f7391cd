"""fslib.runs: content-addressed runs, reuse, resume, damaged checkpoints (tiny model, tiny data)."""

import dataclasses
import json
import warnings

import pytest
import torch

import fslib
from fslib import inference, runs, train
from fslib.images import LabeledImages


def toy_loader(name, split, n=None, seed=0, progress=True, **kw):
    n_images = 80 if split == "train" else 32
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    labels = torch.arange(n_images) % 4
    images = torch.randint(0, 60, (n_images, 3, 8, 8), generator=g)
    images[:, 0] += (labels * 60)[:, None, None]
    return LabeledImages(images.to(torch.uint8), labels, tuple("abcd"), name, split, "toy data")


def refusing_loader(*args, **kw):
    raise AssertionError("a finished run must not load data")


CFG = train.TrainConfig(dataset="cifar10", model="resnet18", width=0.0625, epochs=3, batch_size=16,
                        scheduler="onecycle", lr=0.05, track_every=4, track_until=8, track_sets=("test", "bandstop:1"),
                        channels_last=True)  # the layout the default profile uses; contiguous is tested in test_train


class Interrupt(Exception):
    pass


def interrupt_at(step_to_fail):
    def hook(step, model):
        if step == step_to_fail:
            raise Interrupt(step)
    return hook


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_hash_depends_on_every_field_and_the_version(monkeypatch):
    base = runs.run_hash(CFG)
    assert runs.run_hash(train.TrainConfig(**{**CFG.to_dict()})) == base
    assert runs.run_hash(train.TrainConfig(**{**CFG.to_dict(), "seed": 1})) != base
    assert runs.run_hash(train.TrainConfig(**{**CFG.to_dict(), "label_smoothing": 0.1})) != base
    monkeypatch.setattr(fslib, "__version__", "99.0")
    assert runs.run_hash(CFG) != base
    assert runs.run_path(CFG).name.startswith("resnet18-cifar10-")


@pytest.mark.slow
def test_train_store_and_reuse(cache):
    run = runs.get_or_train(CFG, device="cpu", progress=False, loader=toy_loader)
    for name in ("checkpoint.pt", "history.json", "history.csv", "tracking.csv", "metrics.json",
                 "environment.json", "config.json", "DONE"):
        assert (run.path / name).exists(), name
    assert run.path.parent == cache / "runs" and not run.model.training and inference.uses_channels_last(run.model)
    assert list(run.history.epoch) == [1, 2, 3] and run.metrics["epochs"] == 3 and run.metrics["iterations"] == 12
    assert sorted(run.tracking.iteration.unique()) == [0, 4, 8] and len(run.tracking) == 3 * 2 * 4
    env = json.loads((run.path / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and "git_commit" in env
    # metrics agree with a fresh evaluation, and predict normalises uint8 for us
    test = toy_loader("cifar10", "test")
    logits = run.predict(test.images)
    assert torch.allclose(logits, run.predict(run.normalize(test.images)))
    acc = float((logits.argmax(1) == test.labels).float().mean())
    assert run.metrics["test_acc"] == pytest.approx(acc) and run.metrics["data_source"] == "toy data"
    assert len(run.metrics["per_class_acc"]) == 4 and len(run.metrics["test_confusion"]) == 4
    # a second call reuses the finished run without touching the data
    again = runs.get_or_train(CFG, device="cpu", progress=False, loader=refusing_loader)
    assert same_weights(weights(run.model), weights(again.model))
    assert again.tracking.equals(run.tracking) and again.history.equals(run.history)


@pytest.mark.slow
def test_resume_after_an_interruption_gives_the_uninterrupted_result(cache, tmp_path, monkeypatch):
    reference = runs.get_or_train(CFG, device="cpu", progress=False, loader=toy_loader)
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path / "other"))
    with pytest.raises(Interrupt):  # 4 steps per epoch: dies in epoch 2, after the epoch-1 checkpoint
        runs.get_or_train(CFG, device="cpu", progress=False, loader=toy_loader, hooks=[interrupt_at(6)])
    assert not (runs.run_path(CFG) / "DONE").exists()
    seen = []
    resumed = runs.get_or_train(CFG, device="cpu", progress=False, loader=toy_loader,
                                hooks=[lambda s, m: seen.append(s)])
    assert seen[0] == 5  # resumed after the 4 steps of epoch 1, not from scratch
    assert same_weights(weights(reference.model), weights(resumed.model))
    assert resumed.tracking.equals(reference.tracking)
    timing = ["seconds", "cpu_seconds"]
    assert resumed.history.drop(columns=timing).equals(reference.history.drop(columns=timing))


@pytest.mark.slow
def test_damaged_checkpoint_is_reported_and_retrained(cache):
    with pytest.raises(Interrupt):
        runs.get_or_train(CFG, device="cpu", progress=False, loader=toy_loader, hooks=[interrupt_at(6)])
    ckpt = runs.run_path(CFG) / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated, as by a crash outside atomic writes
    seen = []
    with pytest.warns(runs.CheckpointWarning, match="checkpoint.pt"):
        run = runs.get_or_train(CFG, device="cpu", progress=False, loader=toy_loader, hooks=[lambda s, m: seen.append(s)])
    assert seen[0] == 0 and run.metrics["epochs"] == 3
    assert (run.path / "checkpoint.pt.damaged").exists()


@pytest.mark.slow
def test_damaged_finished_runs_are_named_and_repaired_and_old_runs_adopted(cache):
    cfg = train.TrainConfig(**{**CFG.to_dict(), "epochs": 1, "track_every": 0, "track_sets": ()})
    first = runs.get_or_train(cfg, device="cpu", progress=False, loader=toy_loader)
    # a damaged record costs no training: the finished checkpoint is evaluated again
    metrics = first.path / "metrics.json"
    metrics.write_text(metrics.read_text().replace('"test_acc": ', '"test_acc": 1.0, "was": '))
    steps = []
    with pytest.warns(runs.CheckpointWarning, match=r"metrics\.json is damaged.*no training"):
        again = runs.get_or_train(cfg, device="cpu", progress=False, loader=toy_loader, hooks=[lambda s, m: steps.append(s)])
    assert steps == [] and again.metrics["test_confusion"] == first.metrics["test_confusion"]
    assert same_weights(weights(first.model), weights(again.model))
    # a run written before digests existed: loaded as it is (no data, no training), digests recorded
    for record in first.path.glob("*.sha256"):
        record.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old = runs.get_or_train(cfg, device="cpu", progress=False, loader=refusing_loader)
    assert same_weights(weights(first.model), weights(old.model)) and old.path == first.path
    assert (first.path / "checkpoint.pt.sha256").exists() and (first.path / "metrics.json.sha256").exists()
    # one flipped bit inside the weights (torch.load alone would load it): set aside, retrained
    ckpt = first.path / "checkpoint.pt"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0x40
    ckpt.write_bytes(bytes(data))
    with pytest.warns(runs.CheckpointWarning) as caught:
        retrained = runs.get_or_train(cfg, device="cpu", progress=False, loader=toy_loader)
    messages = [str(w.message) for w in caught]
    assert any("checkpoint.pt is unusable" in m and "sha256" in m and "checkpoint.pt.damaged" in m for m in messages)
    assert (first.path / "checkpoint.pt.damaged").read_bytes() == bytes(data)  # kept aside, never loaded
    assert same_weights(weights(first.model), weights(retrained.model))  # deterministic retrain
    assert retrained.metrics["test_acc"] == first.metrics["test_acc"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_device_changes_nothing_in_the_cache(cache):
    cfg = train.TrainConfig(**{**CFG.to_dict(), "epochs": 1, "track_every": 0, "track_sets": ()})
    path = runs.run_path(cfg)
    path.mkdir(parents=True)
    (path / "DONE").write_text(runs.run_hash(cfg) + "\n")  # looks finished: must not be touched
    before = sorted(p.name for p in path.iterdir())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="CUDA is not available"):
            runs.get_or_train(cfg, device="cuda", progress=False, loader=refusing_loader)
        with pytest.raises(ValueError, match="CUDA is not available"):
            runs.load_finished(cfg, device="cuda")
    assert sorted(p.name for p in path.iterdir()) == before and (path / "DONE").exists()


def test_checkpoint_of_another_config_is_not_used(cache):
    cfg = train.TrainConfig(**{**CFG.to_dict(), "epochs": 1, "track_every": 0, "track_sets": ()})
    path = runs.run_path(cfg)
    path.mkdir(parents=True)
    other = {"meta": {"format": runs.CHECKPOINT_FORMAT, "config": {**cfg.to_dict(), "seed": 7},
                      "fslib_version": fslib.__version__, "classes": list("abcd")},
             "trainer": {}, "finished": False}
    torch.save(other, path / "checkpoint.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert runs._read_checkpoint(path / "checkpoint.pt", cfg) is None
    assert any("config differs" in str(w.message) and "checkpoint.pt" in str(w.message) for w in caught)
    assert (path / "checkpoint.pt.damaged").exists() and not (path / "checkpoint.pt").exists()


def test_a_run_started_from_another_freezes_and_reinitialises_blocks(cache):
    base = runs.get_or_train(CFG, device="cpu", progress=False, loader=toy_loader)
    tune = dataclasses.replace(CFG, epochs=1, track_every=0, track_until=0, track_sets=(), init_from=base.cache_key,
                               trainable=("layer2",), reinit=("classifier",))
    assert runs.run_hash(tune) != runs.run_hash(dataclasses.replace(tune, trainable=("layer3",)))
    tuned = runs.get_or_train(tune, device="cpu", progress=False, loader=toy_loader)
    before, after = base.model.state_dict(), tuned.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("layer2.", "classifier.")) for k in changed)  # frozen blocks bit-identical,
    assert all(not k.startswith("layer2.") or "running" not in k or k in changed for k in before)  # BN of layer2 trains
    fresh = runs.get_or_train(dataclasses.replace(tune, trainable=("conv1",)), device="cpu", progress=False,
                              loader=toy_loader)
    assert not torch.equal(fresh.model.state_dict()["classifier.weight"], before["classifier.weight"])  # re-initialised
    assert torch.equal(fresh.model.state_dict()["classifier.weight"], after["classifier.weight"])  # ... the same way, frozen
    with pytest.raises(ValueError, match="no finished run"):
        runs.get_or_train(dataclasses.replace(tune, init_from="resnet18-cifar10-0000"), device="cpu", progress=False,
                          loader=toy_loader)
    with pytest.raises(ValueError, match="matches no parameter.*valid blocks: bn1, classifier, conv1, layer1"):
        runs.get_or_train(dataclasses.replace(tune, trainable=("layer9",)), device="cpu", progress=False,
                          loader=toy_loader)
