"""fslib.models: the official architectures, widths, input sizes and the registry."""

import pytest
import torch

from fslib import models


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "alexnet", "vgg16"])
def test_cifar_models_map_32px_batches_to_logits(name):
    torch.manual_seed(0)
    model = models.build(name, 7, width=0.125).eval()
    out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 7) and torch.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize("name, expected", [
    ("resnet18", 11_173_962),  # the CIFAR ResNet18 of the official code (and kuangliu/pytorch-cifar)
    ("resnet50", 23_520_842),
    ("vgg16", 14_728_266),     # VGG16-BN, global pool, Linear(512, 10)
])
def test_full_width_parameter_counts_match_the_cifar_reference_models(name, expected):
    assert models.count_parameters(models.build(name, 10)) == expected


def test_alexnet_matches_the_official_layer_sizes():
    convs = 3 * 96 * 9 + 96 * 256 * 9 + 256 * 384 * 9 + 384 * 384 * 9 + 384 * 256 * 9  # no biases
    bns = 2 * (96 + 256 + 384 + 384 + 256)
    fcs = 1024 * 4096 + 4096 * 4096 + 4096 * 10  # no biases
    assert models.count_parameters(models.build("alexnet", 10)) == convs + bns + fcs


def test_resnet_stem_keeps_resolution_and_width_scales_channels():
    model = models.build("resnet18", 10, width=0.25)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    seen = {}
    model.layer1.register_forward_hook(lambda m, i, o: seen.update(layer1=o.shape))
    model.layer4.register_forward_hook(lambda m, i, o: seen.update(layer4=o.shape))
    model(torch.randn(2, 3, 32, 32))
    assert seen["layer1"] == (2, 16, 32, 32)   # round(64 * 0.25) channels at full resolution
    assert seen["layer4"] == (2, 128, 4, 4)


@pytest.mark.parametrize("name, size", [("resnet18", 24), ("resnet50", 40), ("vgg16", 48)])
def test_cifar_resnets_and_vgg_accept_other_input_sizes(name, size):
    assert models.build(name, 4, width=0.0625)(torch.randn(2, 3, size, size)).shape == (2, 4)


def test_alexnet_rejects_other_sizes_with_a_clear_error():
    with pytest.raises(ValueError, match="32x32"):
        models.build("alexnet", 4, width=0.125)(torch.randn(1, 3, 64, 64))


def test_same_seed_same_weights_and_different_seed_different_weights():
    def weights(seed):
        torch.manual_seed(seed)
        return torch.cat([p.flatten() for p in models.build("resnet18", 10, width=0.125).parameters()])

    assert torch.equal(weights(3), weights(3))
    assert not torch.equal(weights(3), weights(4))


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="resnet18.*resnet50.*alexnet.*vgg16"):
        models.build("resnet19", 10)


def test_bad_width_and_classes_fail():
    with pytest.raises(ValueError, match="width"):
        models.build("resnet18", 10, width=0)
    with pytest.raises(ValueError, match="num_classes"):
        models.build("resnet18", 0)
    with pytest.raises(ValueError, match="no width multiplier"):
        models.build("resnet18_imagenet", 10, width=0.5)


@pytest.mark.slow
def test_torchvision_imagenet_resnets_are_untrained_with_the_imagenet_stem():
    model = models.build("resnet18_imagenet", 10)
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert isinstance(model.maxpool, torch.nn.MaxPool2d) and model.fc.out_features == 10
    assert models.build("resnet50_imagenet", 10).eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)
