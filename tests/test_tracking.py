"""fslib.tracking: the named tracking sets and the recorder of per-class accuracy during training."""

import pytest
import torch
from toy_data import toy_set

from fslib import spectral, tracking


def test_track_sets_of_a_natural_dataset():
    test = toy_set(8, "test", size=16)
    assert tracking.track_set("test", test) is test.images
    full = tracking.track_set("bandpass:1,2,3,4", test)
    assert torch.allclose(full, test.images.float() / 255, atol=1e-5)
    stop = tracking.track_set("bandstop:3,4", test)
    energy = spectral.band_energy_fraction(stop.double())
    assert (energy[:, 2:] < 1e-10).all()
    with pytest.raises(ValueError, match="bandpass"):
        tracking.track_set("lowpass:1", test)


def test_recorder_records_every_k_until_and_restores_train_mode():
    test = toy_set(8, "test")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4)).train()
    rec = tracking.TrackingRecorder({"test": test.images}, test.labels, 4, every=5, until=12, mean=(0.5,) * 3,
                                 std=(0.2,) * 3, device="cpu")
    for step in range(20):
        rec(step, model)
    df = rec.frame()
    assert sorted(df.iteration.unique()) == [0, 5, 10] and len(df) == 12 and model.training


def test_synthetic_track_sets_are_the_synthetic_modules_variants(tmp_path, monkeypatch):
    from fslib import data, synthetic

    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path))
    test = data.load("syn_b2", "test", n=32, progress=False)
    images, labels = synthetic.variant("syn_b2", "bandstop", (1, 3), "test", n=32)
    assert torch.equal(tracking.track_set("bandstop:3,1", test), images) and torch.equal(labels, test.labels)


def test_synthetic_track_sets_follow_the_generator_that_made_the_test_split(tmp_path, monkeypatch):
    from fslib import data, synthetic

    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path))
    test = data.load("syn_b4", "test", n=16, progress=False, options={"c0_line_fraction": 0.5})
    config = synthetic.SyntheticConfig(c0_line_fraction=0.5)
    for name, (kind, bands) in {"bandstop:1,4": ("bandstop", (1, 4)), "bandpass:2": ("bandpass", (2,))}.items():
        want = synthetic.variant("syn_b4", kind, bands, "test", n=16, config=config)[0]
        assert torch.equal(tracking.track_set(name, test), want)
        assert not torch.equal(synthetic.variant("syn_b4", kind, bands, "test", n=16)[0], want)
