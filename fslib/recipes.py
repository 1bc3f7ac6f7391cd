"""Training recipes shared by the chapters, one per dataset family and scale.

Several chapters use the same trained models (chapter 2 trains the synthetic and CIFAR-10
models that chapters 4-6 analyse). They must ask the run cache for *identical*
:class:`~fslib.train.TrainConfig` objects, so the recipes live here, not in the notebooks.
A chapter's ``scale`` parameter picks one (the profiles set it):

* ``"smoke"``: tiny models and a few iterations; proves the code runs (CI).
* ``"default"``: sized so the whole book runs in at most 90 minutes on 2 CPU cores, with
  models that learn their tasks (CIFAR-10 ResNet18 >= 80 % test accuracy). Training runs in
  bfloat16 autocast with the channels-last layout (:data:`CPU_FAST`): about 2-3x faster on a
  CPU than fp32, weights and evaluations stay fp32.
* ``"paper"``: the paper's recipe (full width, SGD lr 0.01, ReduceLROnPlateau, up to 200
  epochs, RandomResizedCrop), for a GPU.

Chapter 9 trains its own pair of models (:func:`localization`: clean and frequency-skewed
CIFAR-10 with one reduced recipe) and retrains single blocks of them (:func:`retraining`).

Every choice that departs from the paper is listed in the chapters' "Differences from the
paper" tables, which read them from :func:`describe`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fslib.augment import dfmx
from fslib.runs import run_path
from fslib.spectral import BAND_PAIRS, band_set_name
from fslib.train import TrainConfig

SCALES = ("smoke", "default", "paper")

# Learning-dynamics tracking on the synthetic sets: the original test set, every single band
# kept (band-pass) and every pair of bands removed (band-stop), as the paper.
SYNTHETIC_TRACK_SETS = (
    "test",
    *(band_set_name("bandpass", (b,)) for b in (1, 2, 3, 4)),  # "bandpass:1" ... "bandpass:4"
    *(band_set_name("bandstop", pair) for pair in BAND_PAIRS),  # "bandstop:1,2" ... "bandstop:3,4"
)

# Smoke and default scales train in bfloat16 autocast, NHWC: on 2 CPU cores a ResNet18 x0.25
# step runs about 2x faster than fp32 (benchmarks/train_throughput.py --precision bf16
# --channels-last), deterministically. The paper scale keeps the paper's fp32.
CPU_FAST: dict[str, Any] = dict(precision="bf16", channels_last=True)

_SYNTHETIC: dict[str, dict[str, Any]] = {
    "smoke": dict(model="resnet18", width=0.125, epochs=1, max_iters=40, n_train=1024, n_test=200,
                  track_every=10, track_until=40, **CPU_FAST),
    # 500 iterations (3.6 epochs of 9,000 images) = the paper's window. Tracking 11 sets of 200
    # test images is the larger cost: every 10 iterations it took 70 % of a run's 1.4 minutes
    # (measured in the default book), so every 20
    "default": dict(model="resnet18", width=0.25, epochs=4, max_iters=500, n_test=200,
                    track_every=20, track_until=500, **CPU_FAST),      # paper: first 500 iterations
    "paper": dict(model="resnet18", width=1.0, epochs=30, track_every=5, track_until=500),
}

# CIFAR-10: the default scale trades the paper's 200-epoch plateau schedule for a one-cycle
# schedule that reaches >= 80 % in minutes on a CPU; the paper scale is the paper's recipe.
_CIFAR10: dict[str, dict[str, Any]] = {
    "smoke": dict(width=0.125, epochs=1, n_train=2000, n_test=500, scheduler="onecycle", lr=0.1,
                  weight_decay=5e-4, augment="flipcrop",
                  track_every=5, track_until=20, track_sets=("test",), **CPU_FAST),
    # measured (fp32): 5 epochs gave 78.7 % test accuracy; 8 epochs for >= 80 %
    "default": dict(width=0.25, epochs=8, scheduler="onecycle", lr=0.1, weight_decay=5e-4,
                    augment="flipcrop",
                    track_every=100, track_until=1200, track_sets=("test",),  # paper: 1,200 iterations
                    **CPU_FAST),
    "paper": dict(width=1.0, epochs=200, track_every=50, track_until=1200, track_sets=("test",)),
}

# Chapter 6's other models (other architectures, extra augmentations) train for fewer epochs
# than the ResNet18 baseline that chapters 2-5 share: six models at 8 epochs do not fit the
# default budget. ResNet50 keeps 8: at 6 it reached 74.98 %, under the book's 75 % bar.
_OTHER_EPOCHS: dict[str, dict[str, int]] = {"default": {"resnet50": 8, "*": 6}}
# AugMix draws one random chain per 8 images instead of per image (1.7 -> 0.4 ms per image);
# AutoAugment stays per image (measured in the default book: +8 s on a 64 s epoch).
_AUGMIX_CHUNK: dict[str, int] = {"smoke": 8, "default": 8, "paper": 1}

# Width of each architecture relative to the recipe's ResNet18 width (deeper/wider models are
# made narrower so that every chapter-6 model trains in a few minutes on a CPU).
_MODEL_WIDTH = {"resnet18": 1.0, "resnet50": 0.5, "vgg16": 1.0, "alexnet": 4.0}

_IMAGENETTE: dict[str, dict[str, Any]] = {
    "smoke": dict(width=0.125, epochs=1, n_train=500, n_test=200, resolution=32, scheduler="onecycle",
                  lr=0.1, weight_decay=5e-4, augment="flipcrop", batch_size=64, **CPU_FAST),
    "default": dict(width=0.25, epochs=10, resolution=64, scheduler="onecycle", lr=0.1, weight_decay=5e-4,
                    augment="flipcrop", batch_size=64, **CPU_FAST),
    "paper": dict(width=1.0, epochs=200, resolution=224),
}


# Chapter 9 (where a frequency shortcut lives): a clean and a frequency-skewed CIFAR-10 model
# trained with one reduced recipe (the counterfactual compares the two), and the retraining of
# one block that starts from either. Default: a class-balanced 4,000-image subset, 8 epochs, no
# validation split (the one-cycle schedule does not read it). Measured at 5,000 images and 10
# epochs (seed 0, 1 CPU thread): 61 s per model, clean model 58 % on clean test images.
_LOCALIZATION: dict[str, dict[str, Any]] = {
    "smoke": dict(width=0.125, epochs=2, n_train=1000, n_test=200, val_fraction=0.0, scheduler="onecycle", lr=0.1,
                  weight_decay=5e-4, augment="flipcrop", **CPU_FAST),
    "default": dict(width=0.25, epochs=8, n_train=4000, n_test=1000, val_fraction=0.0, scheduler="onecycle", lr=0.1,
                    weight_decay=5e-4, augment="flipcrop", **CPU_FAST),
    "paper": dict(width=1.0, epochs=200),  # all 50,000 images, the paper's recipe
}
# One-cycle fine-tuning at half the base peak rate, annealed to ~0 so the retrained block settles.
# Measured at 5,000 images (seed 0): retraining *every* block for 1 epoch reproduced 22 % of the
# skewed model's drop on conflicting images and repaired 65 %; for 3 epochs 63 % and 70 %. The
# default takes 3 epochs, so that the joint retraining does about two thirds of either effect.
_RETRAIN: dict[str, dict[str, Any]] = {
    "smoke": dict(epochs=1, scheduler="onecycle", lr=0.05),
    "default": dict(epochs=3, scheduler="onecycle", lr=0.05),
    "paper": dict(epochs=10, scheduler="onecycle", lr=0.01),
}


def _check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; valid: {', '.join(SCALES)}")


def synthetic(dataset: str, seed: int = 0, scale: str = "default") -> TrainConfig:
    """The model of chapter 2 for one synthetic set (``syn_b1``..``syn_b4``) and seed."""
    _check_scale(scale)
    params = dict(_SYNTHETIC[scale])
    params.setdefault("track_sets", SYNTHETIC_TRACK_SETS)
    return TrainConfig(dataset=dataset, seed=seed, **params)


def cifar10(model: str = "resnet18", extra_augment: str = "none", seed: int = 0, scale: str = "default") -> TrainConfig:
    """A CIFAR-10 classifier (chapters 2, 4, 5 and 6 share these)."""
    _check_scale(scale)
    params = dict(_CIFAR10[scale])
    if (model, extra_augment) != ("resnet18", "none"):
        # only the ResNet18 baseline records the early dynamics (chapter 2); chapter 6's
        # variants would spend about 50 s each on records nothing reads
        params.update(track_every=0, track_until=0, track_sets=())
        epochs = _OTHER_EPOCHS.get(scale, {})
        params["epochs"] = epochs.get(model, epochs.get("*", params["epochs"]))
    if extra_augment == "augmix":
        params["extra_augment_chunk"] = _AUGMIX_CHUNK[scale]
    if scale != "paper":  # the paper's models are full width
        params["width"] = params["width"] * _MODEL_WIDTH.get(model, 1.0)
    return TrainConfig(dataset="cifar10", model=model, extra_augment=extra_augment, seed=seed, **params)


def imagenette(model: str = "resnet18", seed: int = 0, scale: str = "default") -> TrainConfig:
    """An Imagenette classifier at reduced resolution (the ImageNet-10 stand-in)."""
    _check_scale(scale)
    return TrainConfig(dataset="imagenette", model=model, seed=seed, **_IMAGENETTE[scale])


def localization(skewed: bool, model: str = "resnet18", seed: int = 0, scale: str = "default",
                 skew_options: dict[str, Any] | None = None) -> TrainConfig:
    """Chapter 9's clean (``cifar10``) or frequency-skewed (``cifar10_skew``) model; the two
    differ only in the dataset (the same images, the skewed ones with planted patterns)."""
    _check_scale(scale)
    params = dict(_LOCALIZATION[scale])
    if scale != "paper":
        params["width"] = params["width"] * _MODEL_WIDTH.get(model, 1.0)
    if not skewed:
        if skew_options:
            raise ValueError(f"skew_options {skew_options} given for the clean model")
        return TrainConfig(dataset="cifar10", model=model, seed=seed, **params)
    return TrainConfig(dataset="cifar10_skew", dataset_options=skew_options or (), model=model, seed=seed, **params)


def retraining(scale: str = "default") -> dict[str, Any]:
    """The TrainConfig fields of chapter 9's one-block retraining (``fslib.localization.retrain_config``)."""
    _check_scale(scale)
    return dict(_RETRAIN[scale])


# Chapter 8: the baseline retrained with a mitigation method. "finetune": every arm (the method,
# and a control without one) continues the chapter-2 baseline for a few epochs with the same
# schedule, which fits the CPU budget (AAUA + AAD costs about 5x a plain step at 1 adversarial
# step); "scratch": a second model trained with the baseline's recipe, as the papers do (seed + 1,
# so that it is another model than the one whose DFMs DFM-X uses, like the control).
MITIGATIONS = ("none", "dfmx", "aaua_aad")
_MITIGATION: dict[str, dict[str, Any]] = {
    "smoke": dict(mode="finetune", epochs=1, lr=0.01, aaua_steps=1),
    "default": dict(mode="finetune", epochs=1, lr=0.01, aaua_steps=1),  # paper AAUA: 5 steps
    "paper": dict(mode="scratch", aaua_steps=5),
}


def mitigation(method: str = "none", masks: str | None = None, seed: int = 0, scale: str = "default") -> TrainConfig:
    """Chapter 8's models: the CIFAR-10 ResNet18 baseline (:func:`cifar10`) retrained with a method.

    Parameters
    ----------
    method : "none" (the control: the same retraining without a method), "dfmx" (DFM-X,
        p = 0.3) or "aaua_aad" (AAUA + AAD with the JS consistency)
    masks : for "dfmx", the key of the source DFMs in the DFM-X store
        (:func:`fslib.augment.dfmx.store_dfms`); they must be one (32, 32) map per CIFAR-10 class
    seed : the baseline's seed
    scale : as :func:`cifar10`; the plan of :data:`_MITIGATION` (fine-tuning or from scratch)
    """
    _check_scale(scale)
    if method not in MITIGATIONS:
        raise ValueError(f"unknown mitigation {method!r}; valid: {', '.join(MITIGATIONS)}")
    if (method == "dfmx") != (masks is not None):
        raise ValueError("DFM-X needs the key of its source DFMs (masks=...), and only DFM-X takes one")
    base, plan = cifar10(seed=seed, scale=scale), _MITIGATION[scale]
    params: dict[str, Any] = dict(track_every=0, track_until=0, track_sets=())
    if plan["mode"] == "finetune":
        params.update(init_from=run_path(base).name, epochs=plan["epochs"], lr=plan["lr"], scheduler="cosine")
    else:
        params.update(seed=seed + 1)
    if method == "dfmx":
        dfmx.check_dfms(dfmx.load_stored_dfms(masks)[0], num_classes=10, size=(32, 32))
        params.update(input_augment="dfmx", input_augment_options={"masks": masks, "p": dfmx.DFMX_P})
    elif method == "aaua_aad":
        params.update(objective="aaua_aad", objective_options={"steps": plan["aaua_steps"]})
    return replace(base, **params)


def describe(cfg: TrainConfig) -> dict[str, Any]:
    """The fields of ``cfg`` that differ from the paper's recipe (the TrainConfig defaults)."""
    paper = TrainConfig(dataset=cfg.dataset, model=cfg.model).to_dict()  # later fields only appear when set
    return {k: v for k, v in cfg.to_dict().items() if (k not in paper or paper[k] != v) and k != "seed"}
