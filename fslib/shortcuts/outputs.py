"""The result folder of a shortcut analysis: DFMs, table, figures and a one-page report.

:func:`write_results` writes, into a temporary folder beside ``out`` that is renamed onto
``out`` only when everything is there (an interrupted write never looks like a result):

* ``dfms.npz`` (ranked maps and DFMs at every size, :func:`fslib.dfm.load_dfms` reads it)
  and ``dfms.json`` (its provenance and class names);
* ``shortcut_test.csv``: TPR / FPR per class and DFM size, with names, intervals, null and
  verdict;
* ``figures/*.png``: the DFM grid, TPR / FPR against the null, filtered examples, the maps
  behind the DFMs, and TPR against the DFM size when several sizes were tested;
* ``report.md`` (figures linked) and ``report.html`` (self-contained: figures inlined, no
  external assets), the same page; ``provenance.json``: everything needed to redo it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import os
import platform
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import pandas as pd
import torch

from fslib import __version__, plot
from fslib.dfm import save_dfms
from fslib.dfm.cost import format_seconds
from fslib.io import atomic_write_text, to_jsonable, write_json

if TYPE_CHECKING:  # annotations only: the analysis module imports this writer
    from fslib.shortcuts.analysis import ShortcutResult

WRAP = 10  # classes per row of a map grid when there are many


def _figure(fig, path: Path) -> str:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path.name


def _grid_axes(n: int):
    rows = math.ceil(n / WRAP)
    fig, axes = plt.subplots(rows, WRAP, figsize=(1.3 * WRAP, 1.45 * rows + 0.3), squeeze=False)
    for a in axes.flat[n:]:
        a.set_visible(False)
    return fig, list(axes.flat)


def _write_figures(result: ShortcutResult, folder: Path) -> dict[str, tuple[str, str]]:
    """Each figure's file name and caption, by key."""
    folder.mkdir(parents=True, exist_ok=True)
    n, pct = len(result.class_names), f"{100 * result.top:g} %"
    out = {}
    if n <= 12:
        fig, _ = result.plot_dfms()
    else:
        fig, axes = _grid_axes(n)
        plot.dfm_grid(result.dfms, ax=axes, class_names=result.class_names)
    out["dfm_grid"] = (_figure(fig, folder / "dfm_grid.png"),
                       "Dominant Frequency Maps: per class, the frequencies kept (white), DC in the centre"
                       + ("; one row per DFM size" if n <= 12 and len(result.tops) > 1 else f", top {pct}"))
    fig, _ = result.plot_rates()
    out["tpr_fpr"] = (_figure(fig, folder / "tpr_fpr.png"),
                      f"TPR and FPR on images holding only a class's DFM (top {pct}), 95 % intervals; the black tick "
                      "is the null (95th percentile of random masks of the same radial profile); * beats the null")
    fig, _ = result.plot_examples()
    out["examples"] = (_figure(fig, folder / "examples.png"),
                       "Scoring images, their class's DFM and what the model sees in the test (title: class -> "
                       "prediction on the filtered image)")
    fig, axes = (None, None) if n <= 12 else _grid_axes(n)
    fig, _ = result.plot_loss_maps(ax=axes) if axes is not None else result.plot_loss_maps()
    out["loss_maps"] = (_figure(fig, folder / "loss_maps.png"),
                        f"The search method's ({result.config.method}) score per frequency, from which the DFMs "
                        "are cut (brighter: removing it hurts the class more)")
    if len(result.tops) > 1:
        fig, _ = result.plot_thresholds()
        out["thresholds"] = (_figure(fig, folder / "tpr_vs_threshold.png"),
                             "TPR per class, mean TPR, mean FPR and mean null against the DFM size")
    return out


def _interval(row, key: str) -> str:
    lo, hi = row[f"{key}_lo"], row[f"{key}_hi"]
    return f"{row[key]:.2f}" + ("" if pd.isna(lo) else f" [{lo:.2f}, {hi:.2f}]")


def class_table(result: ShortcutResult) -> pd.DataFrame:
    """The report's per-class table at the headline DFM size (text cells)."""
    t = result.table
    return pd.DataFrame({
        "class": t["name"], "verdict": t["verdict"], "accuracy": t["baseline_acc"].map("{:.2f}".format),
        "TPR [95 % CI]": [_interval(r, "tpr") for _, r in t.iterrows()],
        "FPR [95 % CI]": [_interval(r, "fpr") for _, r in t.iterrows()],
        "null TPR (p95)": t["null_tpr_p95"].map(lambda v: "-" if pd.isna(v) else f"{v:.2f}"),
        "frequencies": t["n_freq"].astype(int)})


def summary(result: ShortcutResult) -> str:
    """One paragraph: the verdict and the classes behind it."""
    t, c = result.table, result.config
    strong = t["name"][t["verdict"] == "strong shortcut"].tolist()
    beats = t["name"][t["verdict"] != "no shortcut"].tolist()
    pct = f"{100 * result.top:g} %"
    rule = (f"with only the {pct} of frequencies in its DFM kept, the model still recognises the class above the null "
            f"(random masks of the same radial profile), with TPR >= {c.paper_tpr:g} and FPR <= {c.max_fpr:g}")
    if strong:
        text = (f"{len(strong)} of {len(t)} classes have a strong frequency shortcut ({', '.join(strong)}): {rule}.")
    elif beats:
        text = (f"No class has a strong frequency shortcut ({rule}), but {len(beats)} of {len(t)} beat the null "
                f"({', '.join(beats)}).")
    else:
        text = f"No class's DFM beats the null: no frequency shortcut is found at {pct}."
    return f"**Frequency shortcuts: {result.verdict}.** {text}"


def _setup_rows(result: ShortcutResult, record: dict) -> list[tuple[str, str]]:
    c, prov = result.config, result.analysis.saved.provenance
    a, imgs = result.analysis, result.images
    shape = "x".join(str(v) for v in imgs.images.shape[1:])
    protocol = ("the same images (official protocol: inflates the TPR)" if result.same_images
                else f"{len(a.score)} other images (disjoint, class-balanced, seed {c.seed})")
    weights = record.get("weights") or {}
    est = (record.get("estimate") or {}).get("total_seconds")
    rows = [("model", str(record.get("model_spec") or type(result.subject.model).__name__)),
            ("weights", f"{weights.get('file')} (sha256 {str(weights.get('sha256'))[:12]})" if weights else "as given"),
            ("images", f"{imgs.source}; {len(imgs)} used of {sum((imgs.extra.get('found') or {}).values()) or len(imgs)}"),
            ("input", f"{shape}, mean {tuple(result.subject.mean)}, std {tuple(result.subject.std)}"),
            ("ranking", f"{len(a.rank)} images, method {c.method}" + (f" {c.option}" if c.options else "")
             + f", patch {c.patch_size}" + (f", {prov['units']:,} units" if "units" in prov else "")),
            ("scoring", protocol),
            ("DFM sizes", ", ".join(f"{100 * t:g} %" for t in result.tops)),
            ("null, bootstrap", f"{c.n_null} random masks per class, {c.n_boot} resamples"),
            ("time", f"{format_seconds(result.seconds)}" + (f" (estimated {format_seconds(est)})" if est else "")),
            ("fslib", f"{__version__}, torch {torch.__version__}, {record.get('device', '')}".rstrip(", "))]
    return rows


def how_to_read(config) -> list[str]:
    """The report's reading guide, with the verdict's bounds of ``config``."""
    return [
        "A class's **DFM** (Dominant Frequency Map) holds the frequencies whose removal from the input hurts the "
        "model most on that class (Wang et al., ICCV 2023).",
        "**TPR**: share of the class's scoring images still recognised when only the class's DFM is kept; "
        "**FPR**: share of other classes' images that the same filtering pulls into the class.",
        "**Null**: the TPR reached with random masks of the same size and radial profile; a class *beats the null* "
        "when its TPR exceeds the null's 95th percentile.",
        f"A **strong shortcut** beats the null with TPR >= {config.paper_tpr:g} (the follow-up paper's bar) and "
        f"FPR <= {config.max_fpr:g}. The verdict is *holds* when some class has a strong shortcut, *partly* when "
        "some class only beats the null, *does not hold* otherwise. Few images give wide intervals: read the "
        "intervals before the point values.",
    ]


def _blocks(result: ShortcutResult, record: dict, figures: dict) -> list[tuple]:
    title = f"Frequency shortcuts of {record.get('model_spec') or type(result.subject.model).__name__}"
    blocks: list[tuple] = [("h1", title), ("p", summary(result))]
    if result.same_images:
        blocks.append(("warn", "Ranked and scored on the same images: the TPR is inflated (the DFMs are tested on "
                               "the images they were chosen on)."))
    skipped = result.images.extra.get("skipped") or []
    if skipped:
        blocks.append(("warn", f"{len(skipped)} unreadable image(s) left out: "
                               + "; ".join(f"`{f}` ({why})" for f, why in skipped[:10])))
    blocks += [("h2", f"Per class, DFM of the top {100 * result.top:g} %"), ("table", class_table(result))]
    blocks += [("h2", "Figures")] + [("img", f"figures/{name}", caption) for name, caption in figures.values()]
    blocks += [("h2", "How to read this"), ("ul", how_to_read(result.config))]
    blocks += [("h2", "Setup"), ("table", pd.DataFrame(_setup_rows(result, record), columns=["item", "value"]))]
    blocks += [("h2", "Files"), ("ul", [
        "`dfms.npz`: ranked maps and DFMs at every size (`fslib.dfm.load_dfms`); `dfms.json`: their provenance",
        "`shortcut_test.csv`: TPR / FPR per class and DFM size, intervals, null, verdict",
        "`figures/`: the figures above; `provenance.json`: settings, image files, versions, timings"])]
    return blocks


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[tuple]) -> str:
    """Blocks as Markdown (figures linked by relative path)."""
    out = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + rest[0])
        elif kind == "p":
            out.append(rest[0])
        elif kind == "warn":
            out.append(f"> **Warning.** {rest[0]}")
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in rest[0]))
        elif kind == "img":
            out.append(f"![{rest[1]}]({rest[0]})\n\n*{rest[1]}*")
        elif kind == "table":
            df = rest[0]
            lines = ["| " + " | ".join(map(_cell, df.columns)) + " |", "|" + "---|" * len(df.columns)]
            lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in df.itertuples(index=False)]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
    return re.sub(r"(?<![\w*])\*(\S.*?)\*(?![\w*])", r"<em>\1</em>", text)


CSS = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
       "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;"
       "text-align:left}th{background:#f3f3f3}img{max-width:100%}figure{margin:1.5rem 0}"
       "figcaption{color:#555;font-size:.9rem}.warn{background:#fff4e5;border-left:4px solid #f0a000;"
       "padding:.5rem 1rem}code{background:#f3f3f3;padding:0 .2rem}")


def to_html(blocks: list[tuple], folder: Path) -> str:
    """Blocks as one self-contained HTML page: figures inlined as base64 PNG, inline CSS."""
    body = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{_inline(rest[0])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline(rest[0])}</p>")
        elif kind == "warn":
            body.append(f'<p class="warn"><strong>Warning.</strong> {_inline(rest[0])}</p>')
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in rest[0]) + "</ul>")
        elif kind == "img":
            data = base64.b64encode((folder / rest[0]).read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(rest[1])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{_inline(rest[1])}</figcaption></figure>")
        elif kind == "table":
            df = rest[0]
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
            rows = "".join("<tr>" + "".join(f"<td>{_inline(str(v))}</td>" for v in row) + "</tr>"
                           for row in df.itertuples(index=False))
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    title = html.escape(blocks[0][1]) if blocks and blocks[0][0] == "h1" else "fslib shortcuts"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def provenance_record(result: ShortcutResult, extra: dict | None = None) -> dict:
    """The JSON record of a result: versions, model, classes, images, protocol, settings, verdicts."""
    a, imgs, s = result.analysis, result.images, result.subject
    record = {
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "versions": {"fslib": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "model": {"class": type(s.model).__name__, "cache_key": s.cache_key, "mean": list(s.mean), "std": list(s.std),
                  "parameters": sum(p.numel() for p in s.model.parameters())},
        "classes": list(result.class_names),
        "images": {"source": imgs.source, "name": imgs.name, "split": imgs.split, "shape": list(imgs.images.shape[1:]),
                   "given": len(imgs), "found": imgs.extra.get("found"), "skipped": imgs.extra.get("skipped", [])},
        "protocol": {"n_rank": len(a.rank), "n_score": len(a.score), "same_images": result.same_images,
                     "rank_files": result.files("rank"), "score_files": result.files("score")},
        "config": result.config.to_dict(),
        "ranking": {k: v for k, v in a.saved.provenance.items() if k != "thresholds"},
        "seconds": result.seconds,
        "verdict": result.verdict,
        "verdicts": result.verdicts.to_dict(),
    }
    return to_jsonable({**record, **(extra or {})})


def _swap(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` onto ``out``; an existing ``out`` is moved aside first and removed after.

    The files get the usual permissions (the atomic writes create them private), so the
    folder can be shared as it is.
    """
    mask = os.umask(0)
    os.umask(mask)
    for f in tmp.rglob("*"):
        if f.is_file():
            f.chmod(0o666 & ~mask)
    old = out.parent / f".{out.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)


def write_results(result: ShortcutResult, out, *, overwrite: bool = False, provenance: dict | None = None) -> Path:
    """Write the result folder ``out`` (see the module docstring) and return its path.

    Parameters
    ----------
    result : ShortcutResult
    out : folder to create; an existing one is an error unless ``overwrite``
    provenance : dict added to ``provenance.json`` (the command adds its arguments, the
        model spec, the weights file and the cost estimate)
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another folder or overwrite it (--overwrite)")
    tmp = out.parent / f".{out.name}.incomplete"
    if tmp.exists():
        shutil.rmtree(tmp)  # left by an interrupted write
    tmp.mkdir(parents=True)
    try:
        record = provenance_record(result, provenance)
        saved = result.analysis.saved
        dfm_record = {**{k: v for k, v in saved.provenance.items() if k != "thresholds"}, "class_names": record["classes"]}
        save_dfms(tmp / "dfms.npz", saved.loss_maps, {t: saved.dfms[t] for t in result.tops}, dfm_record)
        write_json(tmp / "dfms.json", {**dfm_record, "thresholds": list(result.tops),
                                       "arrays": {"loss_maps": "float64 (classes, H, W), centred layout",
                                                  "dfm_<i>": "bool (classes, H, W), DFM at thresholds[i]"}})
        atomic_write_text(tmp / "shortcut_test.csv", result.sweep.to_csv(index=False))
        figures = _write_figures(result, tmp / "figures")
        blocks = _blocks(result, record, figures)
        atomic_write_text(tmp / "report.md", to_markdown(blocks))
        atomic_write_text(tmp / "report.html", to_html(blocks, tmp))
        write_json(tmp / "provenance.json", record)
        _swap(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
