"""fslib.augment: batched geometric and extra augmentations, seeded by explicit generators."""

import pytest
import torch

from fslib import augment as aug


def test_geometric_none_is_identity_and_rejects_float():
    x = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(aug.geometric(x, "none", torch.Generator()), x)
    with pytest.raises(ValueError, match="uint8"):
        aug.geometric(x.float(), "official", torch.Generator())
    with pytest.raises(ValueError, match="official, flipcrop, none"):
        aug.geometric(x, "rotate", torch.Generator())


@pytest.mark.parametrize("kind", ["official", "flipcrop"])
def test_without_padding_and_rescaling_each_image_is_itself_or_its_mirror(kind):
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = aug.geometric(x, kind, torch.Generator().manual_seed(1), pad=0, scale=(1.0, 1.0))
    same = (y == x).flatten(1).all(1)
    mirrored = (y == x.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all()
    assert 10 < int(mirrored.sum()) < 54  # about half are flipped, each image on its own


def test_flipcrop_is_an_exact_window_of_the_padded_image():
    x = torch.randint(1, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = aug.geometric(x, "flipcrop", torch.Generator().manual_seed(2), pad=2)
    offsets = set()
    for i in range(16):  # slow direct check: y[i] must equal one of the 5x5x2 windows
        found = []
        for img in (x[i], x[i].flip(-1)):
            padded = torch.nn.functional.pad(img, (2, 2, 2, 2))
            found += [(t, c) for t in range(5) for c in range(5) if torch.equal(padded[:, t:t + 8, c:c + 8], y[i])]
        assert found, f"image {i} is not a window of its padded (flipped) original"
        offsets.add(found[0])
    assert len(offsets) > 3  # per-image offsets, not one for the batch


def test_official_crop_keeps_a_constant_image_constant():
    x = torch.full((8, 3, 16, 16), 123, dtype=torch.uint8)
    y = aug.geometric(x, "official", torch.Generator().manual_seed(0), pad=0)
    assert (y == 123).all()


def test_crop_boxes_fit_and_follow_torchvision_sampling():
    from torchvision.transforms import RandomResizedCrop

    n, size = 3000, 40
    boxes = aug.random_resized_crop_boxes(n, size, size, torch.Generator().manual_seed(0))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= size).all() and (left + w <= size).all()
    img = torch.zeros(3, size, size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ref = torch.tensor([RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3))[2:] for _ in range(n)])
    ours_area, ref_area = (h * w).float() / size**2, (ref[:, 0] * ref[:, 1]).float() / size**2
    assert abs(ours_area.mean() - ref_area.mean()) < 0.025   # means ~0.5, standard error ~0.007
    assert abs(ours_area.std() - ref_area.std()) < 0.025
    assert abs((w / h).float().mean() - (ref[:, 1] / ref[:, 0]).float().mean()) < 0.02


def test_augmentation_is_seeded_by_the_generator_only():
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(8, dtype=torch.long)
    def run(s):
        return aug.augment_batch(x, y, torch.Generator().manual_seed(s), kind="official", extra="autoaugment")
    state = torch.get_rng_state()
    a = run(5)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    torch.manual_seed(99)
    assert torch.equal(a, run(5))
    assert not torch.equal(a, run(6))


@pytest.mark.parametrize("name", ["autoaugment", "augmix"])
def test_extra_augmentations_draw_per_image_with_chunk_one(name):
    x = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = x.expand(24, -1, -1, -1)
    y = torch.zeros(24, dtype=torch.long)
    per_image = aug.extra_augment(x.contiguous(), y, name, torch.Generator().manual_seed(1), chunk=1)
    per_batch = aug.extra_augment(x.contiguous(), y, name, torch.Generator().manual_seed(1), chunk=24)
    assert per_image.dtype == torch.uint8 and per_image.shape == x.shape
    def distinct(t):
        return len({bytes(i.numpy().tobytes()) for i in t})
    assert distinct(per_image) > 4
    if name == "autoaugment":  # one op for the whole chunk: identical inputs stay identical
        assert distinct(per_batch) == 1


def test_unknown_extra_augmentation_and_registration():
    x, y = torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="none, autoaugment, augmix"):
        aug.extra_augment(x, y, "cutout", torch.Generator())
    def fn(images, labels, generator, chunk):
        return 255 - images
    aug.register_extra_augment("_invert_test", fn)
    try:
        assert (aug.extra_augment(x, y, "_invert_test", torch.Generator()) == 255).all()
        with pytest.raises(ValueError, match="already registered"):
            aug.register_extra_augment("_invert_test", lambda *a: a[0])
    finally:
        del aug.EXTRA_AUGMENTS["_invert_test"]
