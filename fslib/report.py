"""The book's verdict rules, and the "differences from the paper" rows: defined once.

Every chapter ends with "What we found" (each claim of the paper: holds / partly / does not
hold here) and "Differences from the paper". The rules that turn measurements into a
verdict live here, each stated in its docstring, so a chapter never invents its own:

* :func:`count_verdict`: "holds" when a property holds in every case, "partly" in some,
  "does not hold" in none (claims 1a, 1b, 1c, 5);
* :func:`shortcut_verdict`: claim 3, from a shortcut-test table; :func:`class_verdicts`:
  the same rule read class by class;
* :func:`transfer_verdict`: claim 4, from the transfer of shortcuts to OOD images;
* :func:`differences` and :func:`describe_recipe`: a training config against the paper's
  recipe (the ``TrainConfig`` defaults), as table rows or one line.
"""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from fslib import recipes
from fslib.train import TrainConfig

VERDICTS = ("holds", "partly", "does not hold")
"""The three verdicts of every claim, in this spelling everywhere in the book."""

TRACKING_FIELDS = ("track_every", "track_until", "track_sets")
"""Config fields about learning-dynamics records, not about the model: left out of recipe lines."""


def count_verdict(n: int, total: int) -> str:
    """A claim that should hold in every case: "holds" in all ``total``, "partly" in some,
    "does not hold" in none.

    >>> count_verdict(3, 3), count_verdict(1, 3), count_verdict(0, 3)
    ('holds', 'partly', 'does not hold')
    """
    n, total = int(n), int(total)
    if total < 1 or not 0 <= n <= total:
        raise ValueError(f"need 0 <= n <= total and total >= 1, got n={n}, total={total}")
    return VERDICTS[0] if n == total else VERDICTS[1] if n > 0 else VERDICTS[2]


def shortcut_verdict(table: pd.DataFrame, paper_tpr: float = 0.6, max_fpr: float = 0.1) -> tuple[str, pd.Series]:
    """The book's reading of a shortcut-test table for claim 3 of the paper.

    A class has a *strong* frequency shortcut when its DFM alone beats the null
    (``shortcut``), reaches the paper-style ``TPR >= paper_tpr`` and keeps ``FPR <= max_fpr``
    (the DFM does not pull other classes' images into the class). The claim "holds" when at
    least one class has a strong shortcut, "partly" when some class beats its null but none
    is strong, and "does not hold" when no class beats its null.

    Parameters
    ----------
    table : DataFrame from :func:`fslib.dfm.evaluate_dfms` (columns tpr, fpr, shortcut)
    paper_tpr, max_fpr : float

    Returns
    -------
    (verdict, strong) : one of :data:`VERDICTS`, and a bool Series (one per row)

    >>> t = pd.DataFrame({"tpr": [0.9, 0.7], "fpr": [0.05, 0.3], "shortcut": [True, True]})
    >>> shortcut_verdict(t)[0], shortcut_verdict(t)[1].tolist()
    ('holds', [True, False])
    """
    strong = table["shortcut"].astype(bool) & (table["tpr"] >= paper_tpr) & (table["fpr"] <= max_fpr)
    if strong.any():
        return VERDICTS[0], strong
    return (VERDICTS[1] if table["shortcut"].astype(bool).any() else VERDICTS[2]), strong


CLASS_VERDICTS = ("strong shortcut", "beats the null", "no shortcut")
"""A class's reading of the shortcut test (:func:`class_verdicts`), strongest first."""


def class_verdicts(table: pd.DataFrame, paper_tpr: float = 0.6, max_fpr: float = 0.1) -> pd.Series:
    """Each class's reading of the shortcut test, by the rule of :func:`shortcut_verdict`.

    "strong shortcut": beats the null, ``TPR >= paper_tpr`` and ``FPR <= max_fpr``;
    "beats the null": TPR above the null's 95th percentile but not strong; "no shortcut":
    otherwise.

    >>> t = pd.DataFrame({"tpr": [0.9, 0.7, 0.2], "fpr": [0.05, 0.3, 0.0], "shortcut": [True, True, False]})
    >>> class_verdicts(t).tolist()
    ['strong shortcut', 'beats the null', 'no shortcut']
    """
    _, strong = shortcut_verdict(table, paper_tpr, max_fpr)
    beats = table["shortcut"].astype(bool)
    return pd.Series([CLASS_VERDICTS[0] if s else CLASS_VERDICTS[1] if b else CLASS_VERDICTS[2]
                      for s, b in zip(strong, beats)], index=table.index, name="verdict")


def transfer_verdict(transfer: Sequence[bool], ood_acc: Sequence[float]) -> str:
    """Claim 4 for one OOD set: do the in-distribution shortcuts fire on the OOD images, and
    do they buy accuracy there?

    A class *transfers* when its DFM passes the shortcut test on the ID images and on the OOD
    images. "holds": at least one class transfers and the transferring classes have a higher
    mean OOD accuracy than the others (the shortcut coincides with the OOD successes: an
    illusion of generalisation), or every class transfers; "partly": some class transfers,
    without that advantage; "does not hold": no class transfers.

    Parameters
    ----------
    transfer : one bool per class
    ood_acc : the classes' OOD accuracies

    >>> transfer_verdict([True, False], [0.9, 0.5]), transfer_verdict([True, False], [0.4, 0.5])
    ('holds', 'partly')
    """
    t = pd.Series(list(transfer), dtype=bool)
    acc = pd.Series(list(ood_acc), dtype=float)
    if len(t) != len(acc) or not len(t):
        raise ValueError(f"need one OOD accuracy per class, got {len(t)} flags and {len(acc)} accuracies")
    if not t.any():
        return VERDICTS[2]
    if t.all() or acc[t].mean() > acc[~t].mean():
        return VERDICTS[0]
    return VERDICTS[1]


def robustness_verdict(n_shortcut: dict[str, int], baseline: str) -> str:
    """Claim 5, "larger models and data augmentation do not fully avoid frequency shortcuts":
    :func:`count_verdict` of the models other than ``baseline`` that still have at least one
    shortcut class.

    >>> robustness_verdict({"base": 3, "big": 1, "aug": 0}, "base")
    'partly'
    """
    if baseline not in n_shortcut:
        raise ValueError(f"baseline {baseline!r} not among the models {list(n_shortcut)}")
    others = [int(v) > 0 for k, v in n_shortcut.items() if k != baseline]
    if not others:
        raise ValueError("need at least one model besides the baseline")
    return count_verdict(sum(others), len(others))


def _show(v: Any) -> str:
    return "unset" if v is None else str(v)  # None: no cap / the whole split


def differences(cfg: TrainConfig, *, skip: Sequence[str] = TRACKING_FIELDS, prefix: str = "",
                why: str = "CPU budget (fslib.recipes)") -> pd.DataFrame:
    """The training settings of ``cfg`` that differ from the paper's, as table rows.

    The paper's recipe is the ``TrainConfig`` defaults (:func:`fslib.recipes.describe`).

    Parameters
    ----------
    cfg : TrainConfig
    skip : field names left out (by default the learning-dynamics tracking)
    prefix : put before each setting's name (e.g. ``"CIFAR-10 training: "``)
    why : the "why" column

    Returns
    -------
    DataFrame with columns setting, ours, paper, why (``None`` is shown as ``unset``).

    >>> differences(TrainConfig(width=0.5))[["setting", "ours", "paper"]].values.tolist()
    [['width', '0.5', '1.0']]
    """
    paper = TrainConfig(dataset=cfg.dataset, model=cfg.model).to_dict()
    rows = [(prefix + k, _show(v), _show(paper[k]), why) for k, v in recipes.describe(cfg).items() if k not in skip]
    return pd.DataFrame(rows, columns=["setting", "ours", "paper", "why"])


def describe_recipe(cfg: TrainConfig, skip: Sequence[str] = TRACKING_FIELDS) -> str:
    """:func:`differences` as one line of text, e.g. ``"width 0.25 (paper 1.0); epochs 8 (paper 200)"``;
    ``"as the paper"`` when nothing differs.

    >>> describe_recipe(TrainConfig(width=0.5, epochs=8))
    'width 0.5 (paper 1.0); epochs 8 (paper 200)'
    """
    rows = differences(cfg, skip=skip)
    return "; ".join(f"{r.setting} {r.ours} (paper {r.paper})" for r in rows.itertuples()) or "as the paper"
