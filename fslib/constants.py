"""Constants of the paper and the datasets: normalisation statistics, class names, WNIDs.

The one module that holds them; everything else imports from here.
"""

from __future__ import annotations

# Normalisation (mean, std) per channel, keyed by dataset registry name.
SYNTHETIC_MEAN = (0.498, 0.498, 0.498)   # official synthetic-data script
SYNTHETIC_STD = (0.172, 0.172, 0.172)    # official synthetic-data script ("about 0.172")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # standard CIFAR-10 training-set statistics
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)    # torchvision ImageNet statistics (Imagenette)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET10_MEAN = (0.479838, 0.470448, 0.429404)  # official code, ImageNet-10
IMAGENET10_STD = (0.258143, 0.252662, 0.272406)

NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    **{f"syn_b{k}": (SYNTHETIC_MEAN, SYNTHETIC_STD) for k in (1, 2, 3, 4)},
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar10_skew": (CIFAR10_MEAN, CIFAR10_STD),  # the planted pattern has zero mean: CIFAR-10's statistics
    "imagenette": (IMAGENET_MEAN, IMAGENET_STD),
    "imagenet10": (IMAGENET10_MEAN, IMAGENET10_STD),
    "imagenet10_samples": (IMAGENET10_MEAN, IMAGENET10_STD),
    "imagenet_sct": (IMAGENET10_MEAN, IMAGENET10_STD),
}


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) for a dataset registry name; unknown names fail with the valid ones."""
    try:
        return NORMALIZATION[name]
    except KeyError:
        raise ValueError(f"no normalisation statistics for {name!r}; valid: {', '.join(sorted(NORMALIZATION))}") from None


SYNTHETIC_CLASSES = ("C0", "C1", "C2", "C3")

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)

# The paper's ImageNet-10, in the official code's index order (NOT sorted-WNID order).
IMAGENET10_WNIDS = (
    "n02690373",  # 0 airliner
    "n02814533",  # 1 wagon (station wagon; freight car n03393912 is the other reading)
    "n01833805",  # 2 humming bird
    "n02123597",  # 3 Siamese cat
    "n02403003",  # 4 ox
    "n02099601",  # 5 golden retriever
    "n01644900",  # 6 tailed frog
    "n02391049",  # 7 zebra
    "n03095699",  # 8 container ship
    "n04467665",  # 9 trailer truck
)
IMAGENET10_CLASSES = (
    "airliner", "wagon", "humming bird", "Siamese cat", "ox",
    "golden retriever", "tailed frog", "zebra", "container ship", "trailer truck",
)

# Imagenette (imagenette2), sorted-WNID order = torchvision's label order.
IMAGENETTE_WNIDS = (
    "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
    "n03394916", "n03417042", "n03425413", "n03445777", "n03888257",
)
IMAGENETTE_CLASSES = (
    "tench", "English springer", "cassette player", "chain saw", "church",
    "French horn", "garbage truck", "gas pump", "golf ball", "parachute",
)

# ImageNet-SCT (the paper's OOD set), paired index by index with IMAGENET10_CLASSES.
IMAGENET_SCT_CLASSES = (
    "military aircraft", "car", "lorikeet", "tabby cat", "holstein",
    "Labrador retriever", "tree frog", "horse", "fishing vessel", "fire truck",
)

# Texture-vs-shape stimuli (Geirhos et al., ICLR 2019): the 16 "16-class-ImageNet" classes,
# in their alphabetical order (= label order of fslib's cue_conflict, edges, silhouettes).
CUE_CONFLICT_CLASSES = (
    "airplane", "bear", "bicycle", "bird", "boat", "bottle", "car", "cat",
    "chair", "clock", "dog", "elephant", "keyboard", "knife", "oven", "truck",
)
# The 7 of them that have a counterpart in CIFAR-10 and in the paper's ImageNet-10.
CUE_CONFLICT_TO_CIFAR10 = {
    "airplane": 0,  # airplane
    "car": 1,       # automobile
    "bird": 2,      # bird
    "cat": 3,       # cat
    "dog": 5,       # dog
    "boat": 8,      # ship
    "truck": 9,     # truck
}
CUE_CONFLICT_TO_IMAGENET10 = {
    "airplane": 0,  # airliner
    "car": 1,       # wagon (station wagon)
    "bird": 2,      # humming bird
    "cat": 3,       # Siamese cat
    "dog": 5,       # golden retriever
    "boat": 8,      # container ship
    "truck": 9,     # trailer truck
}
CUE_CONFLICT_MAPPED = tuple(c for c in CUE_CONFLICT_CLASSES if c in CUE_CONFLICT_TO_CIFAR10)
CUE_CONFLICT_LICENSE = (
    "Texture-vs-shape stimuli by Geirhos, Rubisch, Michaelis, Bethge, Wichmann and Brendel "
    "(ICLR 2019), github.com/rgeirhos/texture-vs-shape, licensed CC BY 4.0."
)
