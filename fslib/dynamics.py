"""Learning dynamics: which class a network learns first, and what band-stop tests reveal.

The measurements of chapter 2 (the paper's claim 1). Training and the
per-class tracking live in :mod:`fslib.train` (``TrainConfig.track_every`` /
``track_sets``) and :mod:`fslib.runs`; the recipes shared with chapters 4-6 in
:mod:`fslib.recipes`. This module runs many of them and reads the records:

* :func:`train_all` trains (or loads) one run per dataset and seed;
* :func:`tracking_table` stacks their tracking records (columns dataset, seed,
  iteration, set, class, accuracy, fpr);
* :func:`learned_at` is the definition of "learned" used by the book (below), and
  :func:`learned_first_stats`, :func:`rank_orders` and :func:`threshold_sweep` summarise it;
* :func:`bandstop_test` computes the paper's relative confusion matrices
  ``Delta[i, j] = (Pred_bandstop[i, j] - Pred_original[i, j]) / N_i * 100`` of a trained
  model for every pair of removed bands, :func:`bandstop_all` / :func:`mean_deltas` /
  :func:`bandstop_accuracy_table` collect them over runs.

"Learned" (the book's definition): a class is learned at the first recorded iteration
``t`` at which (a) its accuracy on the tracking set is at least ``threshold``, (b) at most
``max_fpr`` of the other classes' images are predicted as it (so a model that calls
everything "C3" has not learned C3), and (c) its accuracy stays at least
``threshold - tolerance`` at every later recorded iteration of the window (so a transient
spike does not count). Classes learned at the same recorded iteration are tied.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from fslib import data, recipes, runs
from fslib.constants import normalization
from fslib.inference import EVAL_BATCH, confusion_matrix
from fslib.spectral import BAND_PAIRS, band_set_name
from fslib.tracking import TrackingRecorder, track_set
from fslib.train import TrainConfig

__all__ = [
    "BAND_PAIRS", "train_all", "tracking_table", "learned_at", "rank_orders", "learned_first_stats",
    "threshold_sweep", "window_mean_accuracy", "final_accuracy_table", "wall_times",
    "tracking_seconds", "bandstop_test",
    "bandstop_all", "mean_deltas", "bandstop_accuracy_table", "mean_std",
]


Recipe = Callable[..., TrainConfig]


# --------------------------------------------------------------------------- training
def train_all(
    datasets: Sequence[str],
    seeds: Sequence[int],
    scale: str = "default",
    device: str | torch.device = "auto",
    progress: bool = True,
    *,
    recipe: Recipe | None = None,
    loader: Callable[..., Any] | None = None,
) -> dict[tuple[str, int], runs.Run]:
    """One finished run per dataset and seed, from the run cache or trained now.

    Parameters
    ----------
    datasets : names such as ``"syn_b1"``
    seeds : training seeds
    scale : ``"smoke"``, ``"default"`` or ``"paper"`` (:data:`fslib.recipes.SCALES`)
    device : ``"auto"`` (CUDA when present), ``"cpu"``, ...
    progress : tqdm bars of each run
    recipe : ``recipe(dataset, seed=seed, scale=scale) -> TrainConfig``; default
        :func:`fslib.recipes.synthetic`, the configs chapters 4 and 5 reuse
    loader : passed to :func:`fslib.runs.get_or_train` (tests pass a fake one)

    Returns
    -------
    dict ``(dataset, seed) -> Run``, ordered by dataset then seed. The runs are trained
    seed by seed (every dataset of the first seed first), so an interrupted session leaves
    complete seeds in the cache.
    """
    recipe = recipes.synthetic if recipe is None else recipe
    if not datasets or not seeds:
        raise ValueError(f"need at least one dataset and one seed, got datasets={list(datasets)}, seeds={list(seeds)}")
    trained = {(d, int(s)): runs.get_or_train(recipe(d, seed=int(s), scale=scale), device=device, progress=progress,
                                              loader=loader)
               for s in seeds for d in datasets}
    return {(d, int(s)): trained[(d, int(s))] for d in datasets for s in seeds}


def tracking_table(all_runs: Mapping[tuple[str, int], runs.Run]) -> pd.DataFrame:
    """The tracking records of many runs in one long table.

    Returns
    -------
    DataFrame with columns dataset, seed, iteration, set, class, accuracy, fpr.
    """
    frames = []
    for (dataset, seed), run in all_runs.items():
        if run.tracking.empty:
            raise ValueError(f"run {run.path.name} ({dataset}, seed {seed}) has no tracking records; "
                             "train it with track_every > 0 and track_sets")
        frames.append(run.tracking.assign(dataset=dataset, seed=seed))
    if not frames:
        raise ValueError("no runs given")
    df = pd.concat(frames, ignore_index=True)
    cols = ["dataset", "seed", "iteration", "set", "class", "accuracy", "fpr"]
    return df[cols].astype({"iteration": int, "class": int, "seed": int})


# --------------------------------------------------------------------------- "learned first"
def _keys(df: pd.DataFrame) -> list[str]:
    return [k for k in ("dataset", "seed") if k in df.columns]


def learned_at(
    tracking: pd.DataFrame,
    threshold: float = 0.9,
    *,
    tolerance: float | None = 0.1,
    hold: int | None = None,
    max_fpr: float | None = 0.1,
    set: str = "test",
    until: int | None = None,
) -> pd.DataFrame:
    """The iteration at which each class is learned (the book's definition).

    A class is learned at the first recorded iteration ``t <= until`` at which its accuracy
    on ``set`` is ``>= threshold`` and its false-positive rate ``<= max_fpr``, and after
    which its accuracy stays ``>= threshold - tolerance`` at every record in
    ``[t, t + hold]`` (``hold=None``: up to ``until``, the end of the window).
    ``tolerance=None`` drops the persistence condition, ``max_fpr=None`` the FPR one.

    Parameters
    ----------
    tracking : DataFrame with columns iteration, set, class, accuracy, fpr, and optionally
        dataset and seed (one curve per dataset, seed and class)
    threshold : accuracy in [0, 1]
    tolerance : accuracy points the class may lose after being learned
    hold : iterations the class must keep ``threshold - tolerance`` (None: the whole window)
    max_fpr : largest share of other-class images predicted as the class
    set : tracking set, e.g. ``"test"`` or ``"bandpass:3"``
    until : last iteration of the window (None: all records)

    Returns
    -------
    DataFrame with columns [dataset, seed,] class, iteration (float, NaN if never learned
    within the window), one row per curve.

    >>> t = pd.DataFrame({"iteration": [0, 5, 10, 15, 20], "set": "test", "class": 0,
    ...                   "accuracy": [0.2, 0.95, 0.5, 0.95, 0.9], "fpr": 0.0})
    >>> learned_at(t, 0.9)["iteration"].tolist()  # the spike at 5 does not last
    [15.0]
    >>> learned_at(t, 0.9, tolerance=None)["iteration"].tolist()
    [5.0]
    """
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold!r}")
    if tolerance is not None and tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 or None, got {tolerance!r}")
    if hold is not None and hold < 0:
        raise ValueError(f"hold must be >= 0 iterations or None, got {hold!r}")
    df = tracking[tracking["set"] == set]
    if df.empty:
        raise ValueError(f"no tracking rows for set {set!r}; sets present: {sorted(tracking['set'].unique())}")
    if until is not None:
        df = df[df["iteration"] <= until]
    keys = _keys(df) + ["class"]
    rows = []
    for key, g in df.sort_values(keys + ["iteration"]).groupby(keys, sort=True):
        it = g["iteration"].to_numpy(dtype=float)
        acc = g["accuracy"].to_numpy(dtype=float)
        ok = acc >= threshold
        if max_fpr is not None:
            ok &= g["fpr"].to_numpy(dtype=float) <= max_fpr
        if tolerance is not None:
            # later[i, j]: record j lies in [it_i, it_i + hold]; the lowest accuracy there must hold
            later = it[None, :] >= it[:, None]
            if hold is not None:
                later &= it[None, :] <= it[:, None] + hold
            ok &= np.where(later, acc[None, :], np.inf).min(axis=1) >= threshold - tolerance
        hit = np.flatnonzero(ok)
        rows.append((*(key if isinstance(key, tuple) else (key,)), it[hit[0]] if hit.size else np.nan))
    return pd.DataFrame(rows, columns=keys + ["iteration"]).astype({"iteration": float})


def rank_orders(first: pd.DataFrame, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """The order in which the classes were learned, per dataset and seed.

    Parameters
    ----------
    first : output of :func:`learned_at`
    class_names : names of the classes (default ``C0``, ``C1``, ...)

    Returns
    -------
    DataFrame with columns [dataset, seed,] ``order`` (e.g. ``"C3 < C0 = C2 < C1"``, ties
    joined by ``=``, classes never learned listed last as ``never: C1``) and ``first``
    (the class or tied classes learned first, ``"-"`` if none).

    >>> f = pd.DataFrame({"class": [0, 1, 2, 3], "iteration": [20.0, float("nan"), 20.0, 10.0]})
    >>> rank_orders(f).iloc[0].tolist()
    ['C3 < C0 = C2 (never: C1)', 'C3']
    """
    keys = _keys(first)
    name = (lambda c: class_names[int(c)]) if class_names is not None else (lambda c: f"C{int(c)}")
    rows = []
    groups = first.groupby(keys, sort=True) if keys else [((), first)]
    for key, g in groups:
        learned = g.dropna(subset=["iteration"]).sort_values(["iteration", "class"])
        levels = [" = ".join(name(c) for c in h["class"]) for _, h in learned.groupby("iteration", sort=True)]
        never = [name(c) for c in sorted(g.loc[g["iteration"].isna(), "class"])]
        order = " < ".join(levels)
        if never:
            order = f"{order} (never: {', '.join(never)})" if order else f"never: {', '.join(never)}"
        key = key if isinstance(key, tuple) else (key,)
        rows.append((*key, order, levels[0] if levels else "-"))
    return pd.DataFrame(rows, columns=keys + ["order", "first"])


def learned_first_stats(first: pd.DataFrame) -> pd.DataFrame:
    """Mean +- std over seeds of the iteration each class is learned, and how often it is first.

    Parameters
    ----------
    first : output of :func:`learned_at` with a ``seed`` column (and optionally ``dataset``)

    Returns
    -------
    DataFrame with columns [dataset,] class, ``mean``, ``std`` (sample std over the seeds
    where the class was learned; NaN for fewer than two), ``n_learned``, ``n_seeds`` and
    ``n_first`` (seeds where the class was learned first, ties included).
    """
    if "seed" not in first.columns:
        raise ValueError("learned_first_stats needs a 'seed' column (one learned_at row per seed and class)")
    outer = [k for k in ("dataset",) if k in first.columns]
    per_seed_min = first.groupby(outer + ["seed"])["iteration"].transform("min")
    is_first = first["iteration"].notna() & (first["iteration"] == per_seed_min)
    g = first.assign(is_first=is_first).groupby(outer + ["class"])
    out = pd.DataFrame({
        "mean": g["iteration"].mean(),
        "std": g["iteration"].std(),
        "n_learned": g["iteration"].count(),
        "n_seeds": g.size(),
        "n_first": g["is_first"].sum().astype(int),
    })
    return out.reset_index()


def threshold_sweep(tracking: pd.DataFrame, thresholds: Iterable[float], **kwargs) -> pd.DataFrame:
    """Mean iteration (over seeds) at which each class is learned, for several thresholds.

    Shows whether the order depends on the threshold. ``kwargs`` go to :func:`learned_at`.

    Returns
    -------
    DataFrame indexed by ([dataset,] threshold), one column per class, NaN where the class
    was never learned in any seed.
    """
    frames = []
    for t in thresholds:
        first = learned_at(tracking, t, **kwargs)
        frames.append(first.assign(threshold=float(t)))
    df = pd.concat(frames, ignore_index=True)
    outer = [k for k in ("dataset",) if k in df.columns]
    return df.pivot_table(index=outer + ["threshold"], columns="class", values="iteration", aggfunc="mean", dropna=False)


def window_mean_accuracy(tracking: pd.DataFrame, *, set: str = "test", until: int | None = None) -> pd.DataFrame:
    """Mean per-class accuracy over the recorded iterations of the window (the normalised
    area under the accuracy curve): a threshold-free measure of how early a class is learned.

    Returns
    -------
    DataFrame with columns [dataset, seed,] class, accuracy (mean over iterations <= until).
    """
    df = tracking[tracking["set"] == set]
    if df.empty:
        raise ValueError(f"no tracking rows for set {set!r}; sets present: {sorted(tracking['set'].unique())}")
    if until is not None:
        df = df[df["iteration"] <= until]
    return df.groupby(_keys(df) + ["class"], as_index=False)["accuracy"].mean()


# --------------------------------------------------------------------------- final models
def final_accuracy_table(all_runs: Mapping[tuple[str, int], runs.Run]) -> pd.DataFrame:
    """Per-class test accuracy of every finished run.

    Returns
    -------
    DataFrame with columns dataset, seed, class, accuracy (per class) and test_acc (overall).
    """
    rows = [(d, s, c, float(a), float(run.metrics["test_acc"]))
            for (d, s), run in all_runs.items() for c, a in enumerate(run.metrics["per_class_acc"])]
    return pd.DataFrame(rows, columns=["dataset", "seed", "class", "accuracy", "test_acc"])


def wall_times(all_runs: Mapping[tuple[str, int], runs.Run]) -> pd.DataFrame:
    """Training wall time of every run (measured when it was trained, not when loaded).

    Returns
    -------
    DataFrame with columns dataset, seed, iterations, train_seconds (wall clock of the
    training epochs, tracking included), seconds_per_iteration, torch_threads.
    """
    rows = []
    for (d, s), run in all_runs.items():
        m = run.metrics
        it = int(m["iterations"])
        rows.append((d, s, it, float(m["train_seconds"]), float(m["train_seconds"]) / max(it, 1), m.get("torch_threads")))
    return pd.DataFrame(rows, columns=["dataset", "seed", "iterations", "train_seconds", "seconds_per_iteration",
                                       "torch_threads"])


def _test_split(run: runs.Run, n: int | None):
    cfg = run.config
    # the run's dataset options: a model trained on a changed generator is tested on its images
    return data.load(cfg.dataset, "test", n=n if n is not None else cfg.n_test, seed=cfg.data_seed, progress=False,
                     options=cfg.dataset_options)


def tracking_seconds(run: runs.Run, *, test=None) -> dict[str, float]:
    """What the tracking costs: one tracking record of the run's final model, timed now.

    Builds the run's tracking sets (``run.config.track_sets`` on its test split) and times
    one call of the :class:`fslib.tracking.TrackingRecorder` that training uses, on the
    run's device.

    Parameters
    ----------
    run : a finished :class:`fslib.runs.Run` trained with tracking
    test : LabeledImages or None, the test split to use instead of loading it (tests)

    Returns
    -------
    dict with ``seconds_per_record`` (wall clock, now), ``records`` (records made during
    training: steps 0, every, ... <= min(until, iterations)) and ``tracking_seconds`` (their
    product: an estimate of the tracking share of ``run.metrics["train_seconds"]``).
    """
    cfg = run.config
    if cfg.track_every <= 0 or not cfg.track_sets:
        raise ValueError(f"run {run.path.name} was trained without tracking (track_every={cfg.track_every})")
    test = _test_split(run, None) if test is None else test
    sets = {name: track_set(name, test) for name in cfg.track_sets}
    mean, std = normalization(cfg.dataset)
    recorder = TrackingRecorder(sets, test.labels, test.num_classes, cfg.track_every, cfg.track_until, mean, std,
                                run.device)
    t0 = time.perf_counter()
    recorder(0, run.model)
    seconds = time.perf_counter() - t0
    records = min(cfg.track_until, int(run.metrics["iterations"])) // cfg.track_every + 1
    return {"seconds_per_record": seconds, "records": records, "tracking_seconds": seconds * records}


# --------------------------------------------------------------------------- band-stop tests
def relative_confusion(pred_original, pred_bandstop, labels, num_classes: int) -> np.ndarray:
    """The paper's relative confusion matrix of a band-stop test.

    ``Delta[i, j] = (Pred_bandstop[i, j] - Pred_original[i, j]) / N_i * 100``, where
    ``Pred[i, j]`` counts images of class ``i`` predicted as ``j`` and ``N_i`` is the number
    of images of class ``i``. Rows sum to 0; the diagonal is the accuracy change in points.

    Parameters
    ----------
    pred_original, pred_bandstop : Tensor, shape (N,) predicted labels or (N, C) logits
    labels : Tensor, shape (N,)
    num_classes : int

    Returns
    -------
    ndarray, shape (C, C), float64, percentage points.

    >>> relative_confusion(torch.tensor([0, 1]), torch.tensor([1, 1]), torch.tensor([0, 1]), 2).tolist()
    [[-100.0, 100.0], [0.0, 0.0]]
    """
    def as_pred(p):
        p = torch.as_tensor(p)
        return p.argmax(dim=1) if p.ndim == 2 else p

    orig = confusion_matrix(labels, as_pred(pred_original), num_classes).astype(np.float64)
    stop = confusion_matrix(labels, as_pred(pred_bandstop), num_classes).astype(np.float64)
    n = orig.sum(axis=1, keepdims=True)
    if (n == 0).any():
        raise ValueError(f"classes {np.flatnonzero(n[:, 0] == 0).tolist()} have no images")
    return (stop - orig) / n * 100.0


def bandstop_test(
    run: runs.Run,
    pairs: Sequence[tuple[int, int]] = BAND_PAIRS,
    n: int | None = None,
    *,
    test=None,
    batch_size: int = EVAL_BATCH,
) -> dict[str, Any]:
    """Relative confusion matrices of a trained model for band-stop test sets.

    The test images are the run's test split (``n`` images, default the run's ``n_test``,
    from the generator settings of its ``dataset_options``) and their band-stop versions
    :func:`fslib.tracking.track_set` (``"bandstop:J,K"``), the same images the tracking
    records use.

    Parameters
    ----------
    run : a finished :class:`fslib.runs.Run`
    pairs : pairs of bands to remove, each ``(j, k)`` with ``1 <= j < k <= 4``
    n : number of test images (None: ``run.config.n_test``, or the whole split)
    test : LabeledImages or None, the test split to use instead of loading it (tests)
    batch_size : int

    Returns
    -------
    dict with ``pairs`` (tuple of P pairs), ``delta`` (ndarray (P, C, C), percentage
    points, :func:`relative_confusion`), ``acc_original`` (ndarray (C,)),
    ``acc_bandstop`` (ndarray (P, C)) and ``n`` (int, images).
    """
    pairs = tuple(tuple(int(b) for b in p) for p in pairs)
    bad = [p for p in pairs if len(p) != 2 or not (1 <= p[0] < p[1] <= 4)]
    if bad or not pairs:
        raise ValueError(f"invalid band pairs {bad or list(pairs)}; valid: {list(BAND_PAIRS)}")
    test = _test_split(run, n) if test is None else test
    c = test.num_classes
    pred0 = run.predict(test.images, batch_size).argmax(1)
    counts = np.bincount(test.labels.numpy(), minlength=c)
    deltas, accs = [], []
    for j, k in pairs:
        pred = run.predict(track_set(band_set_name("bandstop", (j, k)), test), batch_size).argmax(1)
        deltas.append(relative_confusion(pred0, pred, test.labels, c))
        accs.append(np.diag(confusion_matrix(test.labels, pred, c)) / counts)
    acc0 = np.diag(confusion_matrix(test.labels, pred0, c)) / counts
    return {"pairs": pairs, "delta": np.stack(deltas), "acc_original": acc0, "acc_bandstop": np.stack(accs),
            "n": len(test)}


def bandstop_all(all_runs: Mapping[tuple[str, int], runs.Run], n: int | None = None,
                 pairs: Sequence[tuple[int, int]] = BAND_PAIRS, progress: bool = True) -> dict[tuple[str, int], dict]:
    """:func:`bandstop_test` of every run: ``(dataset, seed) -> result``."""
    return {key: bandstop_test(run, pairs, n) for key, run in tqdm(all_runs.items(), desc="band-stop tests",
                                                                    disable=not progress)}


def mean_deltas(results: Mapping[tuple[str, int], dict]) -> dict[str, np.ndarray]:
    """Relative confusion matrices averaged over seeds: ``dataset -> ndarray (P, C, C)``."""
    by_dataset: dict[str, list[np.ndarray]] = {}
    for (d, _), r in results.items():
        by_dataset.setdefault(d, []).append(r["delta"])
    return {d: np.mean(v, axis=0) for d, v in by_dataset.items()}


def bandstop_accuracy_table(results: Mapping[tuple[str, int], dict]) -> pd.DataFrame:
    """Per-class accuracy on the original and on each band-stop test set, long format.

    Returns
    -------
    DataFrame with columns dataset, seed, removed (``"none"`` or a band set such as
    ``"bandstop:1,2"``, :func:`fslib.spectral.band_set_name`), class,
    accuracy, retention (accuracy divided by the class's accuracy on the original set;
    NaN when that is 0).
    """
    rows = []
    for (d, s), r in results.items():
        acc0 = r["acc_original"]
        for c, a in enumerate(acc0):
            rows.append((d, s, "none", c, float(a), 1.0 if a > 0 else np.nan))
        for (j, k), accs in zip(r["pairs"], r["acc_bandstop"]):
            for c, a in enumerate(accs):
                rows.append((d, s, band_set_name("bandstop", (j, k)), c, float(a),
                             float(a / acc0[c]) if acc0[c] > 0 else np.nan))
    return pd.DataFrame(rows, columns=["dataset", "seed", "removed", "class", "accuracy", "retention"])


def mean_std(df: pd.DataFrame, index: str | list[str], columns: str, value: str, fmt: str = "{:.2f}") -> pd.DataFrame:
    """A table of ``"mean ± std"`` strings over the rows sharing ``index`` and ``columns``
    (typically over seeds); a single value shows without ``± std``, no value as ``-``."""
    g = df.groupby(([index] if isinstance(index, str) else list(index)) + [columns], sort=True)[value]
    stats = pd.DataFrame({"mean": g.mean(), "std": g.std(), "n": g.count()})

    def cell(r) -> str:
        if r["n"] == 0:
            return "-"
        if r["n"] == 1 or not np.isfinite(r["std"]):
            return fmt.format(r["mean"])
        return f"{fmt.format(r['mean'])} ± {fmt.format(r['std'])}"

    return stats.apply(cell, axis=1).unstack(columns)
