"""Fast frequency-shortcut search against the exact ablation, measured side by side in one run.

Usage::

    .venv/bin/python benchmarks/dfm_search.py              # 32 px and 224 px (trains the 224-px model once)
    .venv/bin/python benchmarks/dfm_search.py --part 32    # only the CIFAR-10 part
    .venv/bin/python benchmarks/dfm_search.py --quick      # small CI-friendly run (smoke model, few images)
    .venv/bin/python benchmarks/dfm_search.py --out results.json

Part 32 (the book's default CIFAR-10 ResNet18, ``runs.get_or_train(recipes.cifar10())``, or
with ``--dataset syn_bK`` the ResNet18 of a synthetic set, ``recipes.synthetic``): the
ranking and scoring images come from :func:`fslib.dfm.rank_score_split` of the test set. The
exact ablation (:func:`fslib.dfm.ablation_loss`) runs first; then every method of
:mod:`fslib.dfm.search` on the same images and threads. Printed per method: cost in
forward-equivalents per image (counted by a hook; a backward pass counts as two) and its
ratio to the exact one, wall and CPU seconds and their ratios (the machine is shared: CPU
seconds are less sensitive to other processes), per-class Spearman correlation of the unit
values with the exact maps (where a method has values for every unit) and top-5 % IoU of the
DFMs with the exact DFMs (median and min over classes), for verified methods the share of
classes whose candidates hold the exact top set, and the shortcut test of the DFMs on the
held-out scoring images (:func:`fslib.dfm.evaluate_dfms`): mean TPR, mean FPR, classes
beating the random same-profile null (``shortcut``) and strong ones (also TPR >= 0.6 and
FPR <= 0.1). Targets: a verified method with median IoU >= 0.9 at <= 1/4 of the exact cost.

Part 224 (``benchmarks/imagenette224_model.py``: a narrow ImageNet-style ResNet18 trained on
Imagenette at 224 px): verified DFMs ranked on 500 validation images (50 per class), timed,
against the exact ablation's time extrapolated from timed ablation batches of the same
model, images and unit size; DFMs scored on other validation images. Target: <= 10 minutes on
2 CPU cores.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fslib import data, dfm, recipes, runs  # noqa: E402
from fslib.dfm import search  # noqa: E402
from fslib.dfm.search import (  # noqa: E402
    PassCounter,
    SearchResult,
    contains_exact_top,
    first_order_dfms,
    hfss,
    race_dfms,
    set_search,
    verified_dfms,
)
from fslib.dfm.search.subset import ablation_batch_size, unit_image_losses  # noqa: E402
from fslib.dfm.search.verified import dfm_unit_count  # noqa: E402
from fslib.inference import eval_mode, normalize  # noqa: E402
from fslib.io import write_json  # noqa: E402

TOP = 0.05


# --------------------------------------------------------------------------- measuring
def timed(fn):
    """Run ``fn()``; return (result, wall seconds, CPU seconds of this process)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def exact_result(model, x, y, num_classes, patch_size=1, progress=False) -> SearchResult:
    counter = PassCounter(model)
    with counter:
        maps = dfm.ablation_loss(model, x, y, num_classes, patch_size=patch_size, device="cpu", progress=progress)
    return SearchResult(maps, dfm.dominant_frequency_maps(maps, TOP),
                        {"method": "exact", "settings": {"patch_size": patch_size}, **counter.record(len(y))})


def agreement(res: SearchResult, exact: SearchResult, patch_size: int) -> dict:
    """Spearman (unit values, where the method has all of them) and IoU with the exact DFMs
    (:func:`fslib.dfm.search.agreement`, as chapter 7), and for verified methods the share of
    classes whose candidates hold the exact top set."""
    scores = res.maps if res.maps is not None and not torch.isnan(res.maps).any() else None
    table = search.agreement(scores, res.dfms, exact.maps, top=TOP, patch_size=patch_size)
    out = {"iou_median": float(table["iou"].median()), "iou_min": float(table["iou"].min()),
           "iou": table["iou"].round(3).tolist()}
    if scores is not None:
        out.update(spearman_median=float(table["spearman"].median()), spearman_min=float(table["spearman"].min()))
    if "candidates" in res.extras:
        held = contains_exact_top(res.extras["candidates"], exact.maps, TOP, patch_size)
        out["contains_top"] = float(held.double().mean())
    return out


def shortcut_summary(model, x, y, dfms, n_null: int, seed: int = 0) -> dict:
    table = dfm.evaluate_dfms(model, x, y, dfms, device="cpu", n_boot=0, n_null=n_null, seed=seed, progress=False)
    strong = table["shortcut"] & (table["tpr"] >= 0.6) & (table["fpr"] <= 0.1)
    return {"tpr_mean": float(table["tpr"].mean()), "fpr_mean": float(table["fpr"].mean()),
            "fpr_max": float(table["fpr"].max()), "n_shortcut": int(table["shortcut"].sum()),
            "n_strong": int(strong.sum()), "null_tpr_mean": float(table["null_tpr_mean"].mean()),
            "tpr": table["tpr"].round(3).tolist(), "fpr": table["fpr"].round(3).tolist()}


def fmt(v, spec=".2f", none="-"):
    return none if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def print_table(rows: list[dict]) -> None:
    head = (f"{'method':34s} {'fwd-eq/img':>10s} {'x exact':>8s} {'wall s':>7s} {'x exact':>8s} {'cpu s':>7s} "
            f"{'x exact':>8s} {'Spearman':>12s} {'IoU':>11s} {'top held':>8s} {'TPR':>5s} {'FPR':>5s} "
            f"{'short.':>6s} {'strong':>6s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        sp = f"{fmt(r.get('spearman_median'))} ({fmt(r.get('spearman_min'))})" if "spearman_median" in r else "-"
        io = f"{fmt(r.get('iou_median'))} ({fmt(r.get('iou_min'))})" if "iou_median" in r else "-"
        print(f"{r['method']:34s} {r['fwd_eq']:10.1f} {r['cost_ratio']:8.3f} {r['wall']:7.1f} {r['wall_ratio']:8.3f} "
              f"{r['cpu']:7.1f} {r['cpu_ratio']:8.3f} {sp:>12s} {io:>11s} {fmt(r.get('contains_top')):>8s} "
              f"{fmt(r.get('tpr_mean')):>5s} {fmt(r.get('fpr_mean')):>5s} {r.get('n_shortcut', '-'):>6} "
              f"{r.get('n_strong', '-'):>6}")


# --------------------------------------------------------------------------- part 32
def methods_32(args) -> dict:
    """name -> callable(model, x, y, C) returning a SearchResult."""
    kw = dict(top=TOP, device="cpu", progress=False)
    m = {
        "first-order tangent": lambda *a: first_order_dfms(*a, **kw),
        "first-order tangent, rectified": lambda *a: first_order_dfms(*a, rectify=True, **kw),
        "first-order logit": lambda *a: first_order_dfms(*a, estimator="logit", **kw),
        "first-order tangent, 4 steps": lambda *a: first_order_dfms(*a, steps=4, **kw),
        "verified (signed tangent, 4x)": lambda *a: verified_dfms(*a, rectify=False, **kw),
        "verified (rectified tangent, 4x)": lambda *a: verified_dfms(*a, **kw),
        "verified (rectified logit, 4x)": lambda *a: verified_dfms(*a, screen="logit", **kw),
        **{f"verified (rectified tangent, {n:g}x)": (lambda *a, n=n: verified_dfms(*a, candidates=n, **kw))
           for n in args.verified_candidates if n != 4.0},
        "verified (rectified tangent, adaptive)": lambda *a: verified_dfms(*a, candidates=2.0, adaptive=True,
                                                                          z=1.0, **kw),
        "race (default schedule)": lambda *a: race_dfms(*a, **kw),
        "race (control, prefilter 0.5)": lambda *a: race_dfms(*a, schedule=((0.1, 4.0),), prefilter=0.5,
                                                                control=True, screen="tangent", **kw),
        "set search (TPR - FPR)": lambda *a: set_search(*a, rounds=args.set_rounds, **kw),
        "HFSS (fixed, auto portion)": lambda *a: hfss(*a, n_candidates=args.hfss_candidates, **kw),
    }
    return {k: v for k, v in m.items() if not args.methods or any(s in k for s in args.methods)}


def load_run_dir(path: str):
    """A finished run folder of any fslib version, read-only: model weights from checkpoint.pt
    (``weights_only=True``), architecture from config.json, test accuracy from metrics.json."""
    from types import SimpleNamespace

    from fslib.constants import normalization
    from fslib.io import read_json
    from fslib.models import build

    folder = Path(path)
    if not (folder / "DONE").exists():
        raise SystemExit(f"{folder} is not a finished run (no DONE file)")
    cfg = read_json(folder / "config.json")["config"]
    state = torch.load(folder / "checkpoint.pt", weights_only=True, map_location="cpu")
    metrics = read_json(folder / "metrics.json")
    model = build(cfg["model"], len(metrics["per_class_acc"]), width=cfg["width"])
    model.load_state_dict(state["trainer"]["model"])
    mean, std = normalization(cfg["dataset"])
    return SimpleNamespace(model=model.eval(), normalize=lambda im: normalize(im, mean, std), path=folder,
                           metrics=metrics)


def part_32(args) -> dict:
    scale = "smoke" if args.quick else "default"
    cfg = recipes.cifar10(scale=scale) if args.dataset == "cifar10" else recipes.synthetic(args.dataset, scale=scale)
    run = load_run_dir(args.run_dir) if args.run_dir else runs.load_finished(cfg, device="cpu")
    if run is None:
        if runs.run_path(cfg).exists() and not args.train:
            raise SystemExit(f"{runs.run_path(cfg)} exists but is not finished (another process may be training it); "
                             f"wait for its DONE file or pass --train to resume it here")
        run = runs.get_or_train(cfg, device="cpu")
    test = data.load(args.dataset, "test", progress=False)
    rank, score = dfm.rank_score_split(test.labels, args.n_rank, args.n_score, args.seed)
    model = run.model.cpu()
    x, y = run.normalize(test.images[rank]), test.labels[rank]
    xs, ys = run.normalize(test.images[score]), test.labels[score]
    c = int(test.labels.max()) + 1
    print(f"\n== 32 px: {Path(run.path).name} (test accuracy {run.metrics['test_acc']:.3f}); "
          f"{len(y)} ranking and {len(ys)} scoring test images; {torch.get_num_threads()} threads ==")
    exact, w_ex, c_ex = timed(lambda: exact_result(model, x, y, c))
    rows = []

    def add(name, res, wall, cpu):
        row = {"method": name, "fwd_eq": res.provenance["forward_equivalents"],
               "cost_ratio": res.provenance["forward_equivalents"] / exact.provenance["forward_equivalents"],
               "wall": wall, "wall_ratio": wall / w_ex, "cpu": cpu, "cpu_ratio": cpu / c_ex,
               "settings": res.provenance.get("settings")}
        if name != "exact":
            row.update(agreement(res, exact, 1))
        row.update(shortcut_summary(model, xs, ys, res.dfms, args.n_null, args.seed))
        rows.append(row)
        print(f"  {name}: {wall:.1f} s", flush=True)

    add("exact", exact, w_ex, c_ex)
    for name, fn in methods_32(args).items():
        res, wall, cpu = timed(lambda fn=fn: fn(model, x, y, c))
        add(name, res, wall, cpu)
    print()
    print_table(rows)
    return {"model": Path(run.path).name, "test_acc": run.metrics["test_acc"], "n_rank": len(y),
            "n_score": len(ys), "rows": rows}


# --------------------------------------------------------------------------- part 224
def ablation_rate(model, x, y, units, n_units: int, batch_size: int) -> float:
    """Ablated images per second of the exact ablation's inner loop (one class's images)."""
    dev = torch.device("cpu")
    ids = torch.arange(min(n_units, len(units)))
    with eval_mode(model, cpu_channels_last=True):
        unit_image_losses(model, x[:2], y[:2], units, ids[:1], batch_size, dev)  # warm-up
        (_, wall, _) = timed(lambda: unit_image_losses(model, x, y, units, ids, batch_size, dev))
    return len(ids) * len(y) / wall


def part_224(args) -> dict:
    from imagenette224_model import NarrowResNet18, get_model

    if args.quick:  # timing only: an untrained model, no training in CI
        torch.manual_seed(args.seed)
        model, record = NarrowResNet18().eval(), {"test_acc": float("nan")}
    else:
        model, record = get_model(progress=not args.quiet)
    test = data.load("imagenette", "test", resolution=224, progress=False)
    rank, score = dfm.rank_score_split(test.labels, args.n_rank_224, args.n_score_224, args.seed)
    x, y = normalize_224(test.images[rank]), test.labels[rank]
    xs, ys = normalize_224(test.images[score]), test.labels[score]
    p = args.patch_224
    units = dfm.ablation_units(224, 224, p)
    bs = ablation_batch_size(3, 224, 224, 4, torch.device("cpu"), None)
    print(f"\n== 224 px: narrow ResNet18 on Imagenette (test accuracy {record['test_acc']:.3f}); {len(y)} ranking, "
          f"{len(ys)} scoring validation images; patch {p}: {len(units)} units, "
          f"DFM ~{dfm_unit_count(224, 224, p, TOP)} units per class; {torch.get_num_threads()} threads ==")
    one = (y == 0).nonzero().flatten()[: args.rate_images]
    rate = ablation_rate(model, x[one], y[one], units, args.rate_units, bs)
    exact_s = len(units) * len(y) / rate
    print(f"exact ablation: {rate:.0f} ablated images/s -> {len(units)} units x {len(y)} images = "
          f"{exact_s / 3600:.1f} h extrapolated")
    floor = {}
    for q in sorted({2, p}):  # the paper's 2-px patches, and the benchmark's unit size
        n_units, n_dfm = len(dfm.ablation_units(224, 224, q)), dfm_unit_count(224, 224, q, TOP)
        floor[q] = {"units": n_units, "dfm_units": n_dfm, "exact_hours": n_units * len(y) / rate / 3600,
                    "verified_floor_minutes": n_dfm * len(y) / rate / 60}
        print(f"patch {q}: exact {n_units} units x {len(y)} images: {floor[q]['exact_hours']:.1f} h; any verified "
              f"DFM ablates at least its ~{n_dfm} units on every image of its class: >= "
              f"{floor[q]['verified_floor_minutes']:.0f} min at this rate")
    rows = []
    kw = dict(top=TOP, patch_size=p, device="cpu", progress=not args.quiet)
    todo = {"verified": lambda: verified_dfms(model, x, y, 10, screen=args.screen_224,
                                              candidates=args.candidates_224, **kw)}
    if args.race_224:
        todo["race"] = lambda: race_dfms(model, x, y, 10, prefilter=args.prefilter_224, screen=args.screen_224, **kw)
    for name, fn in todo.items():
        res, wall, cpu = timed(fn)
        row = {"method": f"{name} ({res.provenance['settings']})", "seconds": wall, "cpu": cpu,
               "fwd_eq": res.provenance["forward_equivalents"], "exact_seconds_extrapolated": exact_s,
               "speedup": exact_s / wall}
        row.update(shortcut_summary(model, xs, ys, res.dfms, args.n_null_224, args.seed))
        rows.append(row)
        print(f"{row['method']}: {wall / 60:.1f} min ({row['fwd_eq']:.0f} fwd-eq/img), {row['speedup']:.0f}x faster "
              f"than the exact ablation; shortcut test: mean TPR {row['tpr_mean']:.2f}, FPR {row['fpr_mean']:.2f}, "
              f"{row['n_shortcut']} classes beat the null, {row['n_strong']} strong")
    return {"test_acc": record["test_acc"], "patch_size": p, "units": len(units), "ablation_rate": rate,
            "exact_seconds_extrapolated": exact_s, "floor": floor, "rows": rows}


def normalize_224(images: torch.Tensor) -> torch.Tensor:
    from fslib.constants import normalization

    mean, std = normalization("imagenette")
    return normalize(images, mean, std)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["32", "224", "both"], default="both")
    p.add_argument("--quick", action="store_true", help="smoke CIFAR model, few images, small searches")
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "syn_b1", "syn_b2", "syn_b3", "syn_b4"],
                   help="32-px part: the book's CIFAR-10 ResNet18 or a synthetic-set ResNet18 (4 classes)")
    p.add_argument("--run-dir", default=None, help="32-px part: a finished run folder to use instead of the recipe's")
    p.add_argument("--n-rank", type=int, default=200, help="CIFAR-10 ranking images (20 per class)")
    p.add_argument("--n-score", type=int, default=500, help="CIFAR-10 held-out scoring images")
    p.add_argument("--n-null", type=int, default=20, help="random null masks per class in the shortcut test")
    p.add_argument("--hfss-candidates", type=int, default=500, help="HFSS masks per stage (released: 500)")
    p.add_argument("--set-rounds", type=int, default=3, help="set-search rounds per level")
    p.add_argument("--verified-candidates", type=float, nargs="*", default=[4.0],
                   help="more verified rows: candidates per class as multiples of the DFM size")
    p.add_argument("--methods", nargs="*", default=None, help="substrings of the 32-px methods to run")
    p.add_argument("--n-rank-224", type=int, default=500)
    p.add_argument("--n-score-224", type=int, default=300)
    p.add_argument("--n-null-224", type=int, default=5)
    p.add_argument("--patch-224", type=int, default=8, help="unit size at 224 px (paper: probably 2)")
    p.add_argument("--screen-224", default="tangent")
    p.add_argument("--candidates-224", type=float, default=3.0)
    p.add_argument("--race-224", action="store_true")
    p.add_argument("--prefilter-224", type=float, default=0.25)
    p.add_argument("--rate-units", type=int, default=64, help="units timed for the exact extrapolation at 224 px")
    p.add_argument("--rate-images", type=int, default=8, help="images timed for the exact extrapolation at 224 px")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the book's machine is shared: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--train", action="store_true", help="resume an unfinished CIFAR-10 run folder here")
    p.add_argument("--out", default=None, help="write every figure to this JSON file")
    args = p.parse_args()
    if args.quick:
        args.n_rank, args.n_score, args.n_null, args.hfss_candidates, args.set_rounds = 20, 40, 2, 6, 1
        args.n_rank_224, args.n_score_224, args.n_null_224, args.patch_224 = 20, 20, 2, 16
        args.rate_units, args.rate_images = 8, 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = {"args": vars(args), "threads": torch.get_num_threads(), "load_before": os.getloadavg()}
    print(f"load average before: {out['load_before'][0]:.1f} (1 min) on {os.cpu_count()} CPUs")
    if args.part in ("32", "both"):
        out["32"] = part_32(args)
    if args.part in ("224", "both"):
        out["224"] = part_224(args)
    out["load_after"] = os.getloadavg()
    print(f"load average after: {out['load_after'][0]:.1f} (1 min)")
    if args.out:
        write_json(args.out, out)


if __name__ == "__main__":
    main()
