"""fslib.inference: normalisation, eval mode, batched predict / evaluate, and the Analysable protocol."""

import numpy as np
import pytest
import torch
from torch import nn

from fslib import inference, models


def test_normalize_uint8_equals_float_and_standardises():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    a, b = inference.normalize(x, mean, std), inference.normalize(x.double() / 255, mean, std)
    assert a.dtype == torch.float32 and torch.allclose(a, b)
    assert torch.allclose(a[:, 1] * 0.25 + 0.2, x[:, 1].float() / 255, atol=1e-6)


def test_confusion_matrix_matches_a_direct_count():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (60,), generator=g)
    p0 = torch.randint(0, 3, (60,), generator=g)
    conf = inference.confusion_matrix(labels, p0, 3)
    for i in range(3):
        for j in range(3):
            assert conf[i, j] == int(((labels == i) & (p0 == j)).sum())
    with pytest.raises(ValueError, match="60 labels but 59 predictions"):
        inference.confusion_matrix(labels, p0[:59], 3)


def test_evaluate_reports_accuracy_per_class_and_fpr():
    class Fixed(torch.nn.Module):  # predicts class = first pixel value
        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 3).float()

    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    images = torch.tensor([0, 1, 1, 1, 2, 0]).float().view(6, 1, 1, 1)
    r = inference.evaluate(Fixed(), images, labels, 3, batch_size=4, device="cpu")
    assert r["acc"] == pytest.approx(4 / 6)
    assert np.allclose(r["per_class_acc"], [0.5, 1.0, 0.5])
    assert np.allclose(r["fpr"], [1 / 4, 1 / 4, 0.0])
    with pytest.raises(TypeError, match="mean/std"):
        inference.evaluate(Fixed(), images.to(torch.uint8), labels, 3)


def test_predict_in_bf16_is_close_to_fp32_and_rejects_unknown_precision():
    torch.manual_seed(0)
    model = models.build("resnet18", 4, width=0.0625)
    x = torch.randn(8, 3, 16, 16)
    lf, lb = inference.predict(model, x, device="cpu"), inference.predict(model, x, device="cpu", precision="bf16")
    assert lb.dtype == torch.float32 and not torch.equal(lf, lb)
    assert torch.allclose(lf, lb, atol=0.05 * lf.abs().max().item())
    with pytest.raises(ValueError, match="fp32, bf16"):
        inference.predict(model, x, device="cpu", precision="half")


class _Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return self.conv(x).mean((2, 3))


def test_eval_mode_restores_mode_and_layout_and_follows_the_models_layout():
    torch.manual_seed(0)
    model = _Conv().train()
    x = torch.randn(2, 3, 6, 6)
    with inference.eval_mode(model):
        assert not model.training and model.conv.weight.is_contiguous()
        model(x)
    assert model.training and not model._forward_pre_hooks and model.seen == [False]
    with inference.eval_mode(model, cpu_channels_last=True):
        assert inference.uses_channels_last(model)
        model(x)
    assert model.seen[-1] and model.conv.weight.is_contiguous() and not model._forward_pre_hooks
    cl = _Conv().to(memory_format=torch.channels_last)  # trained channels-last: inputs follow, layout kept
    with inference.eval_mode(cl):
        cl(x)
    assert cl.seen == [True] and inference.uses_channels_last(cl)
    with pytest.raises(RuntimeError, match="inside"):
        with inference.eval_mode(model):
            raise RuntimeError("inside")
    assert model.training and not model._forward_pre_hooks


def test_classifier_is_an_analysable_with_a_weight_digest_key():
    torch.manual_seed(0)
    a = inference.Classifier(nn.Linear(12, 2), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), ("cat", "dog"))
    assert isinstance(a, inference.Analysable) and a.cache_key.startswith("model-")
    b = inference.Classifier(nn.Linear(12, 2), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), ("cat", "dog"))
    assert a.cache_key != b.cache_key  # other weights, another key
    assert inference.Classifier(a.model, a.mean, a.std, a.class_names, key="mine").cache_key == "mine"
    images = torch.randint(0, 256, (3, 3, 2, 2), dtype=torch.uint8)
    flat = nn.Sequential(nn.Flatten(), a.model)
    c = inference.Classifier(flat, a.mean, a.std, a.class_names)
    assert torch.allclose(c.predict(images, device="cpu"), flat(inference.normalize(images, a.mean, a.std)))
    for kw, match in [({"std": (0.0,) * 3}, "positive"), ({"mean": (0.5,)}, "one value per channel"),
                      ({"class_names": ()}, "at least one")]:
        with pytest.raises(ValueError, match=match):
            inference.Classifier(**{"model": flat, "mean": a.mean, "std": a.std, "class_names": ("x",), **kw})
