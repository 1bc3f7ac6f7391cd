"""The book's verdict rules, and the "differences from the paper" rows: defined once.

Every chapter ends with "What we found" (each claim of the paper: holds / partly / does not
hold here) and "Differences from the paper". The rules that turn measurements into a
verdict live here, each stated in its docstring, so a chapter never invents its own:

* :func:`count_verdict`: "holds" when a property holds in every case, "partly" in some,
  "does not hold" in none (claims 1a, 1b, 1c, 5);
* :func:`shortcut_verdict`: claim 3, from a shortcut-test table; :func:`class_verdicts`:
  the same rule read class by class;
* :func:`transfer_verdict`: claim 4, from the transfer of shortcuts to OOD images;
* :func:`spread_verdict`, :func:`roles_verdict` (:func:`shallow_fraction`), :func:`layerwise_mitigation_verdict`: Tsoy and
  Konstantinov's claims on where a shortcut lives (chapter 9);
* :func:`gated_verdict`: a verdict whose precondition failed says so instead of a verdict;
  :func:`settings_summary` and :func:`settings_glance`: under which settings a claim holds,
  in words;
* :func:`shortcut_outcome`, :func:`mitigation_verdict` and :func:`mitigation_claim`: chapter 8,
  does a mitigation method remove frequency shortcuts, or move them?
* :func:`search_verdict`, :func:`more_verdict`: chapter 7's fast searches against the exact ranking;
* :func:`differences` and :func:`describe_recipe`: a training config against the paper's
  recipe (the ``TrainConfig`` defaults), as table rows or one line; :func:`markdown_table`
  shows such a table whole (no cell cut short).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

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


def stability_verdict(iou_low: float, min_iou: float = 0.5) -> str:
    """A class-wise map is "stable" when two disjoint sets of images give maps that share at
    least ``min_iou`` of their positions (IoU) even at the low end of the resampled range,
    else "not stable".

    >>> stability_verdict(0.62), stability_verdict(0.3), stability_verdict(0.55, min_iou=0.6)
    ('stable', 'not stable', 'not stable')
    """
    if not 0 < min_iou <= 1 or not 0 <= iou_low <= 1:
        raise ValueError(f"need 0 <= iou_low <= 1 and 0 < min_iou <= 1, got iou_low={iou_low!r}, min_iou={min_iou!r}")
    return "stable" if iou_low >= min_iou else "not stable"


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


NOT_JUDGED = "not judged"
"""The start of a verdict whose precondition failed (:func:`gated_verdict`)."""


def gated_verdict(verdict: str, met: bool, precondition: str) -> str:
    """``verdict`` when its ``precondition`` holds, else "not judged" and the failed precondition.

    A claim read off a model that does not do its job says nothing about the paper: a
    shortcut test on a CIFAR-10 model below its accuracy bar is reported, not judged.

    >>> gated_verdict("holds", True, "test accuracy >= 80 %")
    'holds'
    >>> gated_verdict("holds", False, "test accuracy >= 80 %")
    'not judged: its precondition failed (test accuracy >= 80 %)'
    """
    if verdict not in VERDICTS:
        raise ValueError(f"unknown verdict {verdict!r}; valid: {', '.join(VERDICTS)}")
    return verdict if met else f"{NOT_JUDGED}: its precondition failed ({precondition})"


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


def search_verdict(iou_median: float, cost_ratio: float, min_iou: float = 0.9, max_cost: float = 0.25) -> str:
    """Does a fast search reproduce the exact DFMs cheaply? "holds" when its median top-5 %
    IoU with the exact DFMs reaches ``min_iou`` at no more than ``max_cost`` of the exact
    cost (forward-equivalents), "partly" when only one of the two is met, "does not hold"
    when neither (the targets of issue 17: IoU 0.9 at a quarter of the cost).

    >>> search_verdict(0.95, 0.2), search_verdict(0.6, 0.2), search_verdict(0.6, 0.5)
    ('holds', 'partly', 'does not hold')
    """
    met = int(float(iou_median) >= min_iou) + int(float(cost_ratio) <= max_cost)
    return VERDICTS[2 - met]


def within_verdict(value: float, limit: float) -> str:
    """Is a measured or extrapolated cost within a target? "holds" when ``value <= limit``,
    "does not hold" otherwise (or when ``value`` is NaN): e.g. issue 17's 224-px target, DFMs
    of 500 ranking images in at most 600 s.

    >>> within_verdict(420.0, 600.0), within_verdict(3600.0, 600.0)
    ('holds', 'does not hold')
    """
    return VERDICTS[0] if float(value) <= float(limit) else VERDICTS[2]


def more_verdict(n_method: int, n_baseline: int) -> str:
    """Does a method find more (shortcut) classes than a baseline? "holds" when more,
    "partly" when as many and at least one, "does not hold" otherwise.

    >>> more_verdict(3, 2), more_verdict(2, 2), more_verdict(0, 0), more_verdict(1, 2)
    ('holds', 'partly', 'does not hold', 'does not hold')
    """
    n_method, n_baseline = int(n_method), int(n_baseline)
    if n_method > n_baseline:
        return VERDICTS[0]
    return VERDICTS[1] if n_method == n_baseline and n_method > 0 else VERDICTS[2]


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


def settings_summary(verdicts: Mapping[str, str]) -> str:
    """Under which settings a claim holds, partly holds and does not hold, in words.

    "holds" is always named (``"holds under no setting"`` when none); the other verdicts,
    and "not judged", only when some setting has them.

    >>> settings_summary({"none": "partly", "official": "partly", "flipcrop": "does not hold"})
    'holds under no setting; partly under none and official; does not hold under flipcrop'
    """
    def names(settings: list[str]) -> str:
        return settings[0] if len(settings) == 1 else f"{', '.join(settings[:-1])} and {settings[-1]}"

    parts = []
    for v in (*VERDICTS, NOT_JUDGED):
        settings = [str(s) for s, got in verdicts.items() if got == v or (v == NOT_JUDGED and str(got).startswith(v))]
        if settings or v == VERDICTS[0]:
            parts.append(f"{v} under {names(settings) if settings else 'no setting'}")
    return "; ".join(parts)


def settings_glance(verdicts: Mapping[str, str]) -> str:
    """A robustness table in a few words: under how many of its settings the claim holds.

    >>> settings_glance({"official": "partly", "none": "holds", "flipcrop": "does not hold"})
    'holds under 1 of 3 settings (none)'
    >>> settings_glance({"official": "partly", "none": "partly"})
    'holds under none of 2 settings'
    >>> settings_glance({"a": "not judged: its precondition failed (x)"})
    'not judged under any of 1 settings'
    """
    if not verdicts:
        raise ValueError("need the verdict of at least one setting")
    if all(str(v).startswith(NOT_JUDGED) for v in verdicts.values()):
        return f"not judged under any of {len(verdicts)} settings"
    holds = [str(s) for s, v in verdicts.items() if v == VERDICTS[0]]
    if not holds:
        return f"holds under none of {len(verdicts)} settings"
    return f"holds under {len(holds)} of {len(verdicts)} settings ({', '.join(holds)})"


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


def spread_verdict(shares: pd.Series, min_share: float = 0.2, dominant: float = 0.75) -> str:
    """"Shortcut learning is not localised in one layer but spread through the network", from
    one curve of block contributions (each block's share of the skew's effect when it alone is
    retrained, mean over seeds; :func:`fslib.localization.layer_contributions`).

    "holds" when at least two blocks reach ``min_share`` each (several blocks can each make a
    sizeable part of the effect); "does not hold" when one block reaches ``dominant`` and no
    other reaches ``min_share`` (one block carries it); "partly" otherwise (one block between
    the two bars, or none reaching ``min_share``: no single block makes the effect).

    >>> spread_verdict(pd.Series({"stem": 0.4, "layer1": 0.3})), spread_verdict(pd.Series({"stem": 0.9, "head": 0.1}))
    ('holds', 'does not hold')
    """
    s = pd.Series(shares, dtype=float).dropna()
    if s.empty:
        raise ValueError("need at least one block's share")
    big = int((s >= min_share).sum())
    if big >= 2:
        return VERDICTS[0]
    if big == 1 and s.max() >= dominant:
        return VERDICTS[2]
    return VERDICTS[1]


def shallow_fraction(shares: pd.Series, shallow: Sequence[str]) -> float:
    """The share of a contribution curve's positive mass that lies in the ``shallow`` blocks
    (negative shares count as 0; NaN when no block has a positive share).

    >>> shallow_fraction(pd.Series({"stem": 0.3, "layer1": 0.1, "head": 0.4, "all": 0.9}), ["stem", "layer1"])
    0.5
    """
    s = pd.Series(shares, dtype=float).drop("all", errors="ignore").clip(lower=0)
    total = s.sum()
    return float(s[s.index.isin(list(shallow))].sum() / total) if total > 0 else float("nan")


def roles_verdict(encode: pd.Series, repair: pd.Series, shallow: Sequence[str], majority: float = 0.6) -> str:
    """"Shallow layers predominantly encode the spurious feature, deep layers predominantly
    forget core features", from the two curves of block contributions (mean over seeds,
    indexed by block; :func:`shallow_fraction`).

    Encoding is *shallow* when at least ``majority`` of the encode curve's positive mass lies
    in the ``shallow`` blocks; forgetting is *deep* when at least ``majority`` of the repair
    curve's lies in the other blocks. "holds": both; "partly": one; "does not hold": neither.

    >>> enc, rep = pd.Series({"stem": 0.6, "head": 0.1}), pd.Series({"stem": 0.1, "head": 0.5})
    >>> roles_verdict(enc, rep, ["stem"]), roles_verdict(rep, enc, ["stem"])
    ('holds', 'does not hold')
    """
    enc, rep = shallow_fraction(encode, shallow), shallow_fraction(repair, shallow)
    return count_verdict(int(enc >= majority) + int(1 - rep >= majority), 2)


def layerwise_mitigation_verdict(gain_conflicting: Sequence[float], gain_clean: Sequence[float], min_gain: float = 0.02) -> str:
    """"Freezing or slowing the blocks the measurement blames mitigates the shortcut": an
    intervention *helps* when it raises the mean accuracy on conflicting test images by at
    least ``min_gain`` over the plain skewed model and costs at most ``min_gain`` on clean
    ones; :func:`count_verdict` over the interventions tried.

    >>> layerwise_mitigation_verdict([0.10, 0.00], [0.01, 0.02])
    'partly'
    """
    conf, clean = list(gain_conflicting), list(gain_clean)
    if len(conf) != len(clean) or not conf:
        raise ValueError(f"need one clean gain per conflicting gain, got {len(conf)} and {len(clean)}")
    helps = sum(c >= min_gain and k >= -min_gain for c, k in zip(conf, clean))
    return count_verdict(helps, len(conf))
SHORTCUT_OUTCOMES = ("kept", "moved", "removed", "new", "none")
"""What became of one class after retraining (:func:`shortcut_outcome`)."""

MITIGATION_VERDICTS = ("removes", "moves", "keeps", "nothing to remove")
"""The answers of :func:`mitigation_verdict` to "does the method remove shortcuts, or move them?"."""


def shortcut_outcome(before: bool, old_after: bool, new_after: bool) -> str:
    """What became of one class's frequency shortcut when a model was retrained.

    ``before``: the class's DFM passed the shortcut test on the source model; ``old_after``:
    that same (old) DFM still passes on the retrained model; ``new_after``: the DFM recomputed
    on the retrained model passes. A shortcut class of the source is *kept* (its old DFM still
    works), *moved* (the old DFM fails, a recomputed one works) or *removed* (neither works);
    another class is *new* when either DFM passes on the retrained model, else *none*.

    >>> shortcut_outcome(True, False, True), shortcut_outcome(True, False, False), shortcut_outcome(False, False, True)
    ('moved', 'removed', 'new')
    """
    if before:
        return "kept" if old_after else "moved" if new_after else "removed"
    return "new" if (old_after or new_after) else "none"


def mitigation_verdict(outcomes: Sequence[str]) -> str:
    """Does retraining remove the source model's frequency shortcuts, or move them?

    With ``S`` the source's shortcut classes (outcomes kept, moved, removed): "nothing to
    remove" when ``S`` is empty; "keeps" when at least half of ``S`` is kept (the old DFMs
    still work); else "moves" when the classes with a shortcut found only by the recomputed
    DFMs (moved and new) number at least half of ``|S|``; else "removes".

    >>> mitigation_verdict(["kept", "moved", "moved", "removed"]), mitigation_verdict(["moved", "new", "removed"])
    ('moves', 'moves')
    >>> mitigation_verdict(["removed", "removed", "moved"]), mitigation_verdict(["kept", "removed"])
    ('removes', 'keeps')
    """
    bad = sorted(set(outcomes) - set(SHORTCUT_OUTCOMES))
    if bad:
        raise ValueError(f"unknown outcome(s) {bad}; valid: {', '.join(SHORTCUT_OUTCOMES)}")
    n = {k: list(outcomes).count(k) for k in SHORTCUT_OUTCOMES}
    source = n["kept"] + n["moved"] + n["removed"]
    if source == 0:
        return MITIGATION_VERDICTS[3]
    if 2 * n["kept"] >= source:
        return "keeps"
    return "moves" if 2 * (n["moved"] + n["new"]) >= source else "removes"


def mitigation_claim(verdict: str, n_after: int, n_after_control: int) -> str:
    """"The method removes frequency shortcuts", judged against a control retrained without it.

    ``n_after`` and ``n_after_control`` count the classes with a shortcut after retraining
    (kept, moved or new) for the method and for the control. "holds" when the method's
    verdict is "removes" and it leaves fewer shortcut classes than the control; "partly" when
    only one of the two is true; "does not hold" when neither is (including "nothing to
    remove").

    >>> mitigation_claim("removes", 1, 3), mitigation_claim("moves", 1, 3), mitigation_claim("moves", 3, 3)
    ('holds', 'partly', 'does not hold')
    """
    if verdict not in MITIGATION_VERDICTS:
        raise ValueError(f"unknown verdict {verdict!r}; valid: {', '.join(MITIGATION_VERDICTS)}")
    hits = (verdict == "removes") + (int(n_after) < int(n_after_control))
    return VERDICTS[2 - hits]


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
    paper = TrainConfig(dataset=cfg.dataset, model=cfg.model)
    rows = [(prefix + k, _show(v), _show(getattr(paper, k)), why) for k, v in recipes.describe(cfg).items() if k not in skip]
    return pd.DataFrame(rows, columns=["setting", "ours", "paper", "why"])


def describe_recipe(cfg: TrainConfig, skip: Sequence[str] = TRACKING_FIELDS) -> str:
    """:func:`differences` as one line of text, e.g. ``"width 0.25 (paper 1.0); epochs 8 (paper 200)"``;
    ``"as the paper"`` when nothing differs.

    >>> describe_recipe(TrainConfig(width=0.5, epochs=8))
    'width 0.5 (paper 1.0); epochs 8 (paper 200)'
    """
    rows = differences(cfg, skip=skip)
    return "; ".join(f"{r.setting} {r.ours} (paper {r.paper})" for r in rows.itertuples()) or "as the paper"


def markdown_table(table: pd.DataFrame, index: bool = False) -> str:
    """``table`` as a Markdown pipe table, every cell in full (pandas' HTML view cuts long cells
    with "..."); ``|`` and line breaks inside cells are escaped.

    >>> print(markdown_table(pd.DataFrame({"setting": ["a|b"], "why": ["x" * 60]})))
    | setting | why |
    |---|---|
    | a\\|b | xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx |
    """
    frame = table.reset_index() if index else table

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)
