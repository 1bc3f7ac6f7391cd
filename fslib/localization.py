"""Where in a network a shortcut lives: counterfactual block retraining and block-wise probes.

After Tsoy and Konstantinov (arXiv:2510.26560): a model trained on clean data and one trained
on a skewed dataset (:mod:`fslib.data.skew`) differ in accuracy on clean and on conflicting
test images; how much of that difference does each block of the network make?

* :data:`BLOCKS`: the blocks of each architecture (stem, stages, head), as parameter-name
  prefixes for ``TrainConfig.trainable`` / ``lr_scale``.
* :func:`retrain_config`: retrain one block of a finished run on some data, the rest frozen.
  :func:`counterfactual_runs` does it for every block in the two directions of the design:
  ``"encode"`` (from the clean model, on skewed data: how much degradation can this block
  alone produce, by encoding the spurious pattern?) and ``"repair"`` (from the skewed model,
  on clean data: how much does this block alone repair, i.e. how much core-feature
  forgetting sits in it?), plus the controls ``"clean-clean"`` and ``"skew-skew"`` (the same
  data the start model saw: what retraining alone changes).
* :func:`accuracy_table` (cached) and :func:`layer_contributions`: accuracies on the test sets
  and each block's share of the total effect.
* :func:`block_features`, :func:`linear_probe` and :func:`probe_table`: how well a linear
  read-out of each block's (globally average-pooled) features recovers the true class or the
  planted pattern.
* :func:`mitigation_configs`: training on the skewed data with chosen blocks slowed
  (``lr_scale``) or frozen at their initialisation (``trainable``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from fslib import data, models, recipes
from fslib.constants import normalization
from fslib.data import skew
from fslib.images import LabeledImages
from fslib.inference import EVAL_BATCH, normalize, predict
from fslib.io import digest, read_json, stable_hash, write_json
from fslib.paths import cache_dir
from fslib.runs import Run, get_or_train
from fslib.train import TrainConfig


def _vgg_blocks(cfg: tuple) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """VGG's convolution stages (between max-pools) as blocks of ``features.<i>`` prefixes."""
    out, stage, i = [], [], 0
    for item in cfg:
        if item == "M":
            out.append((f"stage{len(out) + 1}", tuple(stage)))
            stage, i = [], i + 1
        else:
            stage += [f"features.{i}", f"features.{i + 1}"]  # Conv2d and BatchNorm2d (ReLU has no weights)
            i += 3
    return (*out, ("head", ("classifier",)))


_RESNET = (("stem", ("conv1", "bn1")), ("layer1", ("layer1",)), ("layer2", ("layer2",)), ("layer3", ("layer3",)),
           ("layer4", ("layer4",)), ("head", ("classifier",)))

BLOCKS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "resnet18": _RESNET, "resnet50": _RESNET, "vgg16": _vgg_blocks(models.VGG16_CFG)}
"""Blocks of each CIFAR-style architecture in input-to-output order: ``(name, prefixes)``."""

ALL = "all"
"""The block name meaning "every block at once" (the joint retraining)."""

DIRECTIONS: dict[str, tuple[str, str]] = {
    "encode": ("clean", "skewed"), "repair": ("skewed", "clean"),
    "clean-clean": ("clean", "clean"), "skew-skew": ("skewed", "skewed")}
"""Counterfactual directions: name -> (model the retraining starts from, data it retrains on)."""


def blocks(model: str) -> dict[str, tuple[str, ...]]:
    """The blocks of an architecture, ``{name: parameter-name prefixes}`` in depth order.

    >>> list(blocks("resnet18"))
    ['stem', 'layer1', 'layer2', 'layer3', 'layer4', 'head']
    """
    if model not in BLOCKS:
        raise ValueError(f"no block layout for {model!r}; valid: {', '.join(BLOCKS)}")
    return dict(BLOCKS[model])


def prefixes(model: str, names: Sequence[str]) -> tuple[str, ...]:
    """The parameter-name prefixes of the named blocks (``"all"``: every block)."""
    table = blocks(model)
    if ALL in names:
        return tuple(p for ps in table.values() for p in ps)
    bad = [n for n in names if n not in table]
    if bad:
        raise ValueError(f"unknown block(s) {bad} of {model}; valid: {', '.join(table)} or {ALL!r}")
    return tuple(p for n in names for p in table[n])


# --------------------------------------------------------------------------- counterfactual training
def retrain_config(start: Run, data_cfg: TrainConfig, block: str, **tune: Any) -> TrainConfig:
    """Retrain one block of the finished run ``start`` on the data of ``data_cfg``, the rest frozen.

    Parameters
    ----------
    start : Run, the model the retraining starts from (``init_from=start.cache_key``)
    data_cfg : TrainConfig whose dataset, dataset options and subset are trained on (the
        clean or the skewed model's config); every other field is the start run's
    block : a name of :func:`blocks`, or ``"all"`` (every block trains)
    **tune : TrainConfig fields of the retraining (e.g. ``epochs=1, lr=0.01, scheduler="constant"``)

    Returns
    -------
    TrainConfig; frozen blocks keep their weights and BatchNorm statistics bit for bit.
    """
    cfg = start.config
    trainable = () if block == ALL else prefixes(cfg.model, [block])
    return dataclasses.replace(cfg, dataset=data_cfg.dataset, dataset_options=data_cfg.dataset_options,
                               n_train=data_cfg.n_train, data_seed=data_cfg.data_seed, init_from=start.cache_key,
                               trainable=trainable, reinit=(), track_every=0, track_until=0, track_sets=(),
                               **tune)


def counterfactual_runs(clean: Run, skewed: Run, names: Sequence[str], directions: Sequence[str] = ("encode", "repair"),
                        device="auto", progress: bool = False, loader: Callable | None = None,
                        **tune: Any) -> dict[tuple[str, str], Run]:
    """Every retraining of the design for one pair of models: ``{(direction, block): Run}``.

    Parameters
    ----------
    clean, skewed : the finished runs trained on the clean and on the skewed data (same recipe)
    names : blocks to retrain one at a time (and ``"all"`` for the joint retraining)
    directions : keys of :data:`DIRECTIONS`
    device, progress, loader : as in :func:`fslib.runs.get_or_train`
    **tune : the retraining's TrainConfig fields (:func:`retrain_config`)
    """
    start = {"clean": clean, "skewed": skewed}
    out = {}
    for direction in directions:
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
        frm, on = DIRECTIONS[direction]
        for name in names:
            cfg = retrain_config(start[frm], start[on].config, name, **tune)
            out[direction, name] = get_or_train(cfg, device=device, progress=progress, loader=loader)
    return out


def train_pairs(architectures: Sequence[str], seeds: Sequence[int], scale: str, skew_options=None, device="auto",
                progress: bool = False) -> dict[tuple[str, int], dict[str, Run]]:
    """The clean and the skewed model of every architecture and seed (:func:`fslib.recipes.localization`):
    ``{(arch, seed): {"clean": Run, "skewed": Run}}``."""
    return {(a, s): {kind: get_or_train(recipes.localization(kind == "skewed", a, s, scale,
                                                             skew_options if kind == "skewed" else None),
                                        device=device, progress=progress)
                     for kind in ("clean", "skewed")}
            for a in architectures for s in seeds}


def counterfactual_table(pairs: Mapping[tuple[str, int], Mapping[str, Run]], sets: Mapping[str, LabeledImages],
                         directions: Sequence[str], tune: Mapping[str, Any], device="auto",
                         progress: bool = False) -> pd.DataFrame:
    """Accuracies of the trained pairs and of every one-block retraining (every block and ``"all"``).

    Returns
    -------
    DataFrame with columns ``arch``, ``seed``, ``direction`` (``"clean"`` / ``"skewed"`` for the
    two trained models, else a key of :data:`DIRECTIONS`), ``block`` (``""`` for the trained
    models), one accuracy column per test set and ``follows_pattern``; ``train_seconds`` (wall)
    and ``train_cpu_seconds`` (CPU time of the process, all threads), as recorded by each run.
    """
    subjects = {}
    for (arch, seed), pair in pairs.items():
        subjects.update({(arch, seed, kind, ""): run for kind, run in pair.items()})
        found = counterfactual_runs(pair["clean"], pair["skewed"], [*blocks(arch), ALL], directions, device,
                                    progress, **tune)
        subjects.update({(arch, seed, d, b): run for (d, b), run in found.items()})
    table = accuracy_table(subjects, sets, device)
    table.columns = ["arch", "seed", "direction", "block", *table.columns[4:]]
    table["train_seconds"] = [r.metrics["train_seconds"] for r in subjects.values()]
    table["train_cpu_seconds"] = [r.metrics.get("train_cpu_seconds", float("nan")) for r in subjects.values()]
    return table


# --------------------------------------------------------------------------- evaluation
def evaluation_sets(name: str, options, n: int | None, seed: int = 0, loader: Callable | None = None) -> dict[str, LabeledImages]:
    """The clean, aligned and conflicting test sets of a skewed dataset (``loader`` as
    :func:`fslib.data.load`, given for tests: it must return the base test split)."""
    load = data.load if loader is None else loader
    base = load(skew.SKEWED[name], "test", n=n, seed=seed, progress=False)
    return {k: skew.test_variant(base, name, k, options, seed=seed) for k in skew.TEST_KINDS}


def _accuracies(model: nn.Module, mean, std, sets: Mapping[str, LabeledImages], device) -> dict[str, float]:
    row = {}
    for name, s in sets.items():
        pred = predict(model, s.images, EVAL_BATCH, device, mean=mean, std=std).argmax(1)
        row[name] = float((pred == s.labels).float().mean())
        pattern = s.extra.get("pattern")
        if name == "conflicting" and pattern is not None:
            row["follows_pattern"] = float((pred == pattern).float().mean())
    return row


def accuracy_table(subjects: Mapping[Any, Run], sets: Mapping[str, LabeledImages], device="auto") -> pd.DataFrame:
    """Accuracy of each run on each test set, cached per run and set.

    Parameters
    ----------
    subjects : ``{key: Run}``; a tuple key becomes several index columns
    sets : ``{name: LabeledImages}`` (e.g. :func:`evaluation_sets`)

    Returns
    -------
    DataFrame, one row per subject, a column per set (accuracy) and ``follows_pattern`` (the
    share of conflicting images predicted as the class whose pattern they carry).
    """
    key = stable_hash({k: [digest(s.images), digest(s.labels)] for k, s in sets.items()}, length=12)
    rows = []
    for k, run in subjects.items():
        path = cache_dir("localization") / f"acc-{run.cache_key}-{key}.json"
        if path.exists():
            row = read_json(path)
        else:
            row = _accuracies(run.model, run.mean, run.std, sets, device)
            write_json(path, row)
        row = {c: row[c] for c in [*sets, "follows_pattern"] if c in row}  # the JSON file sorts its keys
        rows.append({**(dict(enumerate(k)) if isinstance(k, tuple) else {0: k}), **row})
    return pd.DataFrame(rows)


def layer_contributions(table: pd.DataFrame, metric: str = "clean") -> pd.DataFrame:
    """Each retrained block's share of the skew's effect on one test set.

    Parameters
    ----------
    table : DataFrame with columns ``seed`` (and ``arch``, optional), ``direction``
        (``"clean"`` and ``"skewed"`` rows are the two trained models; the others keys of
        :data:`DIRECTIONS`), ``block`` and ``metric`` (:func:`counterfactual_table`)
    metric : the test-set column, e.g. ``"clean"`` or ``"conflicting"``

    Returns
    -------
    DataFrame with one row per retraining: (``arch``,) ``seed``, ``direction``, ``block``,
    ``acc``, ``drop`` (the clean model's accuracy minus the skewed model's, same seed) and
    ``share``: for ``encode`` and ``clean-clean`` (starting from the clean model)
    ``(acc_clean - acc) / drop``, the part of the drop the block produces; for ``repair`` and
    ``skew-skew`` ``(acc - acc_skewed) / drop``, the part it repairs. 1: the block alone does
    all of it; 0: nothing; NaN when there is no drop.

    >>> t = pd.DataFrame({"seed": [0, 0, 0, 0], "direction": ["clean", "skewed", "encode", "repair"],
    ...                   "block": ["", "", "stem", "head"], "clean": [0.8, 0.4, 0.7, 0.6]})
    >>> layer_contributions(t)["share"].round(2).tolist()
    [0.25, 0.5]
    """
    keys = [k for k in ("arch", "seed") if k in table.columns]
    trained = table["direction"].isin(["clean", "skewed"])
    base = table[trained].set_index([*keys, "direction"])[metric]
    rows = []
    for r in table[~trained].to_dict("records"):
        key = tuple(r[k] for k in keys)
        hi, lo = base[(*key, "clean")], base[(*key, "skewed")]
        gain = hi - r[metric] if DIRECTIONS[r["direction"]][0] == "clean" else r[metric] - lo
        rows.append({**{k: r[k] for k in keys}, "direction": r["direction"], "block": r["block"], "acc": r[metric],
                     "drop": hi - lo, "share": gain / (hi - lo) if hi != lo else float("nan")})
    return pd.DataFrame(rows)


def blamed(shares: pd.Series, min_share: float = 0.2, top: int = 2) -> list[str]:
    """The blocks a contribution curve blames: those with a share of at least ``min_share``,
    the largest first, at most ``top``; the single largest when none reaches ``min_share``.

    >>> blamed(pd.Series({"stem": 0.5, "layer1": 0.3, "head": 0.25}))
    ['stem', 'layer1']
    """
    s = pd.Series(shares, dtype=float).drop(ALL, errors="ignore").dropna().sort_values(ascending=False)
    if s.empty:
        raise ValueError("no block has a share")
    chosen = s[s >= min_share].index[:top].tolist()
    return chosen or [s.index[0]]


# --------------------------------------------------------------------------- probes
def _feature_modules(model: nn.Module, arch: str) -> dict[str, nn.Module]:
    """The module whose output is each block's output (ReLU applied afterwards where needed)."""
    named = dict(model.named_modules())
    out = {}
    for name, ps in blocks(arch).items():
        last = ps[-1]
        if arch == "vgg16" and name != "head":
            last = f"features.{int(last.split('.')[1]) + 1}"  # the stage's last ReLU
        out[name] = named[last]
    return out


@torch.no_grad()
def block_features(model: nn.Module, arch: str, images: torch.Tensor, batch_size: int = EVAL_BATCH,
                   device="auto") -> dict[str, torch.Tensor]:
    """Each block's output for normalised ``images`` (N, C, H, W), averaged over space.

    Returns
    -------
    ``{block: Tensor (N, D) float32}`` in depth order: the stem's output after its ReLU,
    each stage's output, and the logits for the head.
    """
    mods = _feature_modules(model, arch)
    got: dict[str, list[torch.Tensor]] = {k: [] for k in mods}

    def hook(name):
        def fn(_m, _i, out):
            out = out.float()
            if out.ndim == 4:
                out = F.adaptive_avg_pool2d(F.relu(out) if name == "stem" else out, 1).flatten(1)
            got[name].append(out.cpu())
        return fn

    handles = [m.register_forward_hook(hook(k)) for k, m in mods.items()]
    try:
        predict(model, images, batch_size, device)
    finally:
        for h in handles:
            h.remove()
    return {k: torch.cat(v) for k, v in got.items()}


def linear_probe(features: torch.Tensor, targets: torch.Tensor, n_fit: int, *, weight_decay: float = 1e-3,
                 steps: int = 100, seed: int = 0) -> float:
    """Held-out accuracy of a multinomial logistic regression on ``features``.

    The first ``n_fit`` rows fit the probe (features standardised with their statistics,
    L2 penalty ``weight_decay``, full-batch L-BFGS for ``steps`` iterations from zero
    weights); the remaining rows score it.

    Parameters
    ----------
    features : Tensor, shape (N, D), float
    targets : Tensor, shape (N,), int64 in 0..K-1
    n_fit : int, 1 <= n_fit < N
    """
    if not 1 <= n_fit < len(targets) or len(features) != len(targets):
        raise ValueError(f"need 1 <= n_fit < N and one target per row; got n_fit={n_fit}, "
                         f"{len(features)} rows, {len(targets)} targets")
    x = features.double()
    mu, sd = x[:n_fit].mean(0), x[:n_fit].std(0).clamp_min(1e-8)
    x = (x - mu) / sd
    y = targets.long()
    k = int(y.max()) + 1
    w = torch.zeros(x.shape[1], k, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x[:n_fit] @ w + b, y[:n_fit]) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        opt.step(closure)
    with torch.no_grad():
        return float(((x[n_fit:] @ w + b).argmax(1) == y[n_fit:]).double().mean())


def initial_model(cfg: TrainConfig, num_classes: int = 10) -> nn.Module:
    """The untrained model a run of ``cfg`` starts from (seeded as :class:`fslib.train.Trainer`)."""
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        return models.build(cfg.model, num_classes, width=cfg.width).eval()


def probe_table(subjects: Mapping[Any, tuple[nn.Module, str, str]], tasks: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                mean=None, std=None, fit_fraction: float = 0.5, device="auto", **probe: Any) -> pd.DataFrame:
    """Linear-probe accuracy of every block of every model on every task, cached.

    Parameters
    ----------
    subjects : ``{key: (model, architecture, cache key)}``; a tuple key becomes index columns
    tasks : ``{task: (images uint8 (N, C, H, W), targets (N,) int64)}``, e.g. the true class
        of clean images and the planted pattern of images whose pattern is independent of
        their class
    mean, std : the input normalisation (default: CIFAR-10's)
    fit_fraction : share of each task's images (in a fixed random order) that fit the probe; the rest score it
    **probe : passed to :func:`linear_probe`

    Returns
    -------
    DataFrame: the key columns, ``task``, ``block``, ``depth`` (0 = stem) and ``accuracy``.
    """
    if mean is None:
        mean, std = normalization("cifar10")
    settings = stable_hash({"fit": fit_fraction, **probe, **{t: [digest(x), digest(y)] for t, (x, y) in tasks.items()},
                            "norm": [list(mean), list(std)]}, length=12)
    rows = []
    for k, (model, arch, key) in subjects.items():
        path = cache_dir("localization") / f"probe-{key}-{settings}.json"
        if path.exists():
            found = read_json(path)
        else:
            found = []
            for task, (images, targets) in tasks.items():
                order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))  # data may be class-major
                feats = block_features(model, arch, normalize(images[order], mean, std), device=device)
                n_fit = int(round(fit_fraction * len(targets)))
                for depth, (block, f) in enumerate(feats.items()):
                    found.append({"task": task, "block": block, "depth": depth,
                                  "accuracy": linear_probe(f, targets[order], n_fit, **probe)})
            write_json(path, found)
        cols = dict(enumerate(k)) if isinstance(k, tuple) else {0: k}
        rows += [{**cols, **{c: r[c] for c in ("task", "block", "depth", "accuracy")}} for r in found]
    return pd.DataFrame(rows)


def probe_tasks(name: str, options, n: int, seed: int = 0, loader: Callable | None = None
                ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The two probe tasks on ``n`` test images of a skewed dataset's base.

    ``"true class"``: the clean images and their labels. ``"planted pattern"``: the same
    images, each carrying the pattern of a class drawn independently of its label, and that
    class as the target (so a probe cannot read the pattern off the object).
    """
    load = data.load if loader is None else loader
    base = load(skew.SKEWED[name], "test", n=n, seed=seed, progress=False)
    config = skew.config_of(data.check_options(name, options))
    drawn = torch.randint(0, base.num_classes, (len(base),), generator=torch.Generator().manual_seed(seed + 7))
    return {"true class": (base.images, base.labels),
            "planted pattern": (skew.plant(base.images, drawn, config, seed=seed + 8, num_classes=base.num_classes), drawn)}


def probe_subjects(pairs: Mapping[tuple[str, int], Mapping[str, Run]]) -> dict[tuple, tuple[nn.Module, str, str]]:
    """``{(arch, seed, model): (module, arch, cache key)}`` for :func:`probe_table`: the
    untrained network each pair started from, the clean and the skewed model."""
    out = {}
    for (arch, seed), pair in pairs.items():
        cfg = pair["clean"].config
        key = f"init-{stable_hash({'model': cfg.model, 'width': cfg.width, 'seed': cfg.seed}, length=12)}"
        out[arch, seed, "untrained"] = (initial_model(cfg), arch, key)
        out.update({(arch, seed, kind): (run.model, arch, run.cache_key) for kind, run in pair.items()})
    return out


# --------------------------------------------------------------------------- mitigation
def mitigation_configs(cfg: TrainConfig, blamed: Mapping[str, Sequence[str]], factor: float = 0.1) -> dict[str, TrainConfig]:
    """Layer-wise interventions on a training run (usually the skewed model's config).

    Parameters
    ----------
    cfg : TrainConfig
    blamed : ``{label: block names}``; each gives two runs, ``"slow <label>"`` (those blocks at
        ``lr x factor``) and ``"freeze <label>"`` (those blocks stay at their initialisation)
    factor : float in (0, 1)

    Returns
    -------
    ``{name: TrainConfig}``
    """
    if not 0 < factor < 1:
        raise ValueError(f"factor must be in (0, 1), got {factor}")
    out = {}
    every = prefixes(cfg.model, [ALL])
    for label, names in blamed.items():
        chosen = prefixes(cfg.model, names)
        out[f"slow {label}"] = dataclasses.replace(cfg, lr_scale=tuple((p, factor) for p in chosen))
        out[f"freeze {label}"] = dataclasses.replace(cfg, trainable=tuple(p for p in every if p not in chosen))
    return out


def mitigation_table(pairs: Mapping[tuple[str, int], Mapping[str, Run]], targets: Mapping[str, Mapping[str, Sequence[str]]],
                     kinds: Sequence[str], sets: Mapping[str, LabeledImages], factor: float = 0.1, device="auto",
                     progress: bool = False) -> pd.DataFrame:
    """Train the skewed model again with blamed blocks slowed or frozen, and evaluate.

    Parameters
    ----------
    pairs : ``{(arch, seed): {"clean": Run, "skewed": Run}}`` (:func:`train_pairs`)
    targets : ``{arch: {label: block names}}``, e.g. ``{"resnet18": {"encoding blocks": ["stem"]}}``
    kinds : ``"slow"`` and/or ``"freeze"`` (:func:`mitigation_configs`)
    sets : test sets (:func:`evaluation_sets`)

    Returns
    -------
    DataFrame: ``arch``, ``seed``, ``intervention`` (``"none (clean data)"`` and
    ``"none (skewed data)"`` for the two trained models), ``blocks``, the test-set accuracies and
    ``follows_pattern``.
    """
    subjects, blocks_of = {}, {}
    for (arch, seed), pair in pairs.items():
        subjects[arch, seed, "none (clean data)"] = pair["clean"]
        subjects[arch, seed, "none (skewed data)"] = pair["skewed"]
        for name, cfg in mitigation_configs(pair["skewed"].config, targets[arch], factor).items():
            if name.split(" ", 1)[0] in kinds:
                subjects[arch, seed, name] = get_or_train(cfg, device=device, progress=progress)
                blocks_of[arch, name] = ", ".join(targets[arch][name.split(" ", 1)[1]])
    table = accuracy_table(subjects, sets, device)
    table.columns = ["arch", "seed", "intervention", *table.columns[3:]]
    table.insert(3, "blocks", [blocks_of.get((a, n), "") for a, n in zip(table["arch"], table["intervention"])])
    return table
