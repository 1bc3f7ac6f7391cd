"""fslib.augment.adversarial: AAUA, AAD and the JS consistency objective."""

import pytest
import torch
import torch.nn.functional as F
from toy_data import toy_loader

from fslib import models, train
from fslib.augment import adversarial as adv
from fslib.spectral import fft_centred


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return models.build("resnet18", 4, width=0.0625).eval()


def batch(seed=0, n=16, size=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g) * 0.5 + torch.rand(n, 3, 1, 1, generator=g) * 0.5
    return x, torch.arange(n) % 4


def test_the_box_is_centred_conjugate_symmetric_and_the_released_size():
    box = adv.lowfreq_box(32, 32)
    assert int(box.sum()) == 9 and bool(box[16, 16]) and torch.equal(box, box.flip(0).roll(1, 0).flip(1).roll(1, 1))
    assert int(adv.lowfreq_box(224, 224).sum()) == 23 * 23  # released: int(0.9*112):int(1.1*112) = 100..122
    with pytest.raises(ValueError, match="box ratio"):
        adv.lowfreq_box(32, 32, 0.0)


def test_aaua_keeps_shape_and_range_and_changes_mostly_the_box():
    model = tiny_model()
    x, y = batch()
    out = adv.aaua(model, x, y, torch.Generator().manual_seed(0), steps=1, step_size=0.2)
    assert out.shape == x.shape and out.dtype == x.dtype and 0 <= out.min() and out.max() <= 1
    box = adv.lowfreq_box(16, 16)
    change = (fft_centred(out) - fft_centred(x)).abs() / fft_centred(x).abs().clamp_min(1e-3)
    # outside the box the spectrum changes only through the clipping to [0, 1]
    assert change[..., box].mean() > 5 * change[..., ~box].mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_adversarial_step_increases_the_loss(seed):
    model = tiny_model(seed)
    x, y = batch(seed)
    start = adv.aaua(model, x, y, torch.Generator().manual_seed(seed), steps=0)
    after = adv.aaua(model, x, y, torch.Generator().manual_seed(seed), steps=1, step_size=0.2)
    with torch.no_grad():
        assert F.cross_entropy(model(after), y) > F.cross_entropy(model(start), y)


def test_aaua_eps_bounds_the_directions():
    model = tiny_model()
    x, y = batch()
    _, (dm, ds) = adv.aaua(model, x, y, torch.Generator().manual_seed(0), steps=3, eps=0.5, return_directions=True)
    assert dm.shape == (16, 3, 1, 1) and dm.abs().max() <= 0.5 and ds.abs().max() <= 0.5


def test_aad_drops_symmetrically_keeps_dc_and_at_the_scaled_gradient_rate():
    model = tiny_model()
    x, y = batch(n=1)
    x, y = x.expand(128, -1, -1, -1).contiguous(), y.expand(128)  # copies: the same drop probabilities
    out, drop = adv.aad(model, x, y, torch.Generator().manual_seed(0), return_mask=True)
    assert out.shape == x.shape and drop.shape == x.shape and 0 <= out.min() and out.max() <= 1
    assert not drop[..., 8, 8].any()
    mirrored = drop.flip(-2).roll(1, -2).flip(-1).roll(1, -1)  # the conjugate partner at 16 px
    assert torch.equal(drop, mirrored)
    prob = adv.drop_probability(model, x[:1], y[:1])[0]
    prob[..., 8, 8] = 0
    assert prob.min() == 0 and (drop.float().mean(0) - prob).abs().mean() < 0.05


def test_aad_drops_less_with_a_higher_threshold():
    model = tiny_model()
    x, y = batch(n=32)
    _, low = adv.aad(model, x, y, torch.Generator().manual_seed(0), threshold=4.0, return_mask=True)
    _, high = adv.aad(model, x, y, torch.Generator().manual_seed(0), threshold=1.0, return_mask=True)
    assert low.float().mean() < 0.5 * high.float().mean()


def test_both_are_deterministic_for_a_seed_and_differ_across_seeds():
    model = tiny_model()
    x, y = batch()
    for fn in (lambda *a: adv.aaua(*a, steps=1), adv.aad):
        a, b = (fn(model, x, y, torch.Generator().manual_seed(5)) for _ in range(2))
        c = fn(model, x, y, torch.Generator().manual_seed(6))
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_js_divergence_is_zero_for_equal_views_and_positive_otherwise():
    z = torch.randn(8, 4)
    assert float(adv.js_divergence(z, z)) < 1e-6
    assert float(adv.js_divergence(z, -z, torch.zeros_like(z))) > 0.05
    with pytest.raises(ValueError, match="at least 2 views"):
        adv.js_divergence(z)


def test_frozen_bn_statistics_restores_the_running_statistics():
    model = tiny_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    with adv.frozen_bn_statistics(model):
        model(torch.rand(8, 3, 16, 16))
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    model(torch.rand(8, 3, 16, 16))
    assert not all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_the_objective_is_registered_and_rejects_unknown_options():
    assert train.OBJECTIVES["aaua_aad"] is adv.aaua_aad_objective
    cfg = train.TrainConfig(dataset="cifar10", objective="aaua_aad", objective_options={"stepz": 1})
    model = tiny_model().train()
    x, y = batch()
    with pytest.raises(ValueError, match=r"unknown aaua_aad option\(s\) \['stepz'\]"):
        adv.aaua_aad_objective(model, x, y, cfg, torch.Generator())


def test_the_objective_returns_a_loss_with_gradients_and_clean_logits():
    model = tiny_model().train()
    x, y = batch()
    cfg = train.TrainConfig(dataset="cifar10", objective="aaua_aad", objective_options={"steps": 1})
    loss, logits = adv.aaua_aad_objective(model, x, y, cfg, torch.Generator().manual_seed(0))
    assert logits.shape == (16, 4) and loss.ndim == 0
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert float(loss.detach()) > float(F.cross_entropy(logits.detach(), y))  # CE(clean) + CE(AAUA) + JS


@pytest.mark.slow
def test_training_with_aaua_aad_is_deterministic():
    cfg = train.TrainConfig(dataset="cifar10", width=0.0625, epochs=1, batch_size=16, scheduler="onecycle", lr=0.05,
                            objective="aaua_aad", objective_options={"steps": 1})
    runs = [train.Trainer(cfg, train.load_data(cfg, toy_loader), "cpu", progress=False).fit() for _ in range(2)]
    a, b = (r.model.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs[0].history[0]["train_loss"] == runs[1].history[0]["train_loss"]
