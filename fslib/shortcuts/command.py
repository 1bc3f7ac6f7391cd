"""``python -m fslib shortcuts DATA --model SPEC``: the shortcut analysis from the command line.

:func:`add_arguments` declares the options (the ``--method`` choices are read from the
registry of search methods, :data:`fslib.dfm.METHODS`, when the parser is built) and
:func:`run` does the work in three steps:

1. prepare: read and check everything (folder or dataset, model, weights, size,
   normalisation, class names, image counts); a bad value prints one line naming it and
   what is valid, and exits with status 2 before anything is computed;
2. plan: print what will run and the cost estimate (:func:`fslib.shortcuts.estimate`);
   ``--dry-run`` stops here;
3. run: :func:`fslib.shortcuts.analyse` (cached, checkpointed: after an interruption the
   same command resumes) and :func:`fslib.shortcuts.write_results` into ``--out``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from fslib import data, dfm
from fslib.device import VALID as DEVICES
from fslib.device import resolve_device
from fslib.dfm.cost import CostEstimate, format_seconds
from fslib.images import DataError, LabeledImages
from fslib.inference import Classifier
from fslib.paths import cache_root
from fslib.shortcuts.analysis import analyse, estimate
from fslib.shortcuts.loading import (
    NAMED_NORMALIZATIONS,
    InputError,
    _close,
    build_model,
    load_weights,
    parse_model_spec,
    parse_normalization,
    probe_model,
)
from fslib.shortcuts.outputs import write_results

USAGE_ERROR, INTERRUPTED = 2, 130
RANK_PER_CLASS, SCORE_PER_CLASS = 10, 50  # defaults, as far as the smallest class allows


def _fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected fractions such as 0.05 or 0.01,0.05,0.1") from None
    if not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every DFM size must be a fraction in (0, 1], e.g. 0.05 for 5 %")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's options on ``p``."""
    methods = sorted(dfm.METHODS)
    p.add_argument("data", metavar="DATA", help="an image folder (DATA/<class>/<image>, optionally under train/ val/ "
                   f"test/), or when no such folder exists a dataset the book knows ({', '.join(data.DATASETS)})")
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, metavar="SPEC",
                   help="torchvision:NAME, timm:NAME (pip install 'fslib[models]') or path/to/file.py:FACTORY")
    g.add_argument("--weights", metavar="FILE", help="state dict (torch.save(model.state_dict())), read with "
                   "torch.load(weights_only=True); .safetensors with safetensors")
    g.add_argument("--num-classes", type=int, metavar="N", help="model outputs (default: the classes in DATA)")
    g.add_argument("--size", type=int, metavar="PX", help="input size in pixels (default: 224 for a folder, the "
                   "dataset's own size for a book dataset)")
    g.add_argument("--normalize", metavar="NORM", help="imagenet | cifar10 | none | M,S | M1,M2,M3,S1,S2,S3 "
                   "(default: imagenet for a folder, the dataset's own for a book dataset)")
    g = p.add_argument_group("images")
    g.add_argument("--split", help="train | val | test (default: val, else test, else train; test for a dataset)")
    g.add_argument("--classes", metavar="A,B,...", help="class folder names in the model's label order "
                   "(default: sorted, as torchvision's ImageFolder)")
    g.add_argument("--resize", choices=data.folder.RESIZE_MODES, default="crop",
                   help="crop: shorter side to --size then centre crop; squash (default: %(default)s)")
    g.add_argument("--skip-bad-images", action="store_true", help="leave unreadable images out (named in the report) "
                   "instead of stopping")
    g.add_argument("--n-rank", type=int, metavar="N", help=f"images the DFMs are ranked on, in total (default: "
                   f"{RANK_PER_CLASS} per class)")
    g.add_argument("--n-score", type=int, metavar="N", help=f"other images the DFMs are tested on (default: "
                   f"{SCORE_PER_CLASS} per class, as far as the smallest class allows)")
    g.add_argument("--same-images", action="store_true", help="test on the ranking images (the official protocol; "
                   "inflates the TPR)")
    g = p.add_argument_group("analysis")
    g.add_argument("--method", choices=methods, default="exact", help="how frequencies are ranked (default: %(default)s)")
    g.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="a method-specific setting (YAML value); repeatable")
    g.add_argument("--patch-size", type=int, default=1, metavar="P", help="P x P blocks of frequencies ranked together "
                   "(default: %(default)s; 8 or 16 make 224-px models affordable on a CPU)")
    g.add_argument("--top", type=_fractions, default=[0.05], metavar="F[,F...]",
                   help="DFM size(s) as fractions of the frequencies; the first is the headline (default: 0.05)")
    g.add_argument("--n-null", type=int, default=20, metavar="N", help="random masks per class for the null "
                   "(default: %(default)s)")
    g.add_argument("--n-boot", type=int, default=1000, metavar="N", help="bootstrap resamples (default: %(default)s)")
    g.add_argument("--tpr", type=float, default=0.6, help="TPR of a strong shortcut (default: %(default)s, the paper's)")
    g.add_argument("--max-fpr", type=float, default=0.1, help="largest FPR of a strong shortcut (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="image draw, split, null masks, bootstrap (default: 0)")
    g = p.add_argument_group("running")
    g.add_argument("--device", default="auto", help=f"{' | '.join(DEVICES)} (default: auto)")
    g.add_argument("--batch-size", type=int, metavar="N", help="images per forward pass (default: automatic)")
    g.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's)")
    g.add_argument("--cache", metavar="DIR", help="cache of DFMs and checkpoints (default: $FSLIB_CACHE or fslib's)")
    g.add_argument("--out", metavar="DIR", help="result folder (required unless --dry-run)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    g.add_argument("--dry-run", action="store_true", help="print the plan and the cost estimate, then exit")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


@dataclass
class Prepared:
    """Everything :func:`run` needs, checked."""

    subject: Classifier
    images: LabeledImages
    n_rank: int
    n_score: int
    config: dfm.DFMConfig
    record: dict[str, Any]
    lines: list[str]


def _counts_default(args, counts: list[int], num_classes: int) -> tuple[int, int]:
    """``--n-rank`` / ``--n-score`` or their defaults, checked against the smallest class."""
    smallest = min(counts)
    rank_pc = min(RANK_PER_CLASS, smallest if args.same_images else max(1, smallest // 3))
    n_rank = args.n_rank if args.n_rank is not None else rank_pc * num_classes
    if args.same_images:
        if args.n_score:
            raise InputError(f"--same-images scores on the ranking images; drop --n-score {args.n_score}")
        n_score = 0
    else:
        n_score = args.n_score if args.n_score is not None else min(SCORE_PER_CLASS, smallest - math.ceil(
            n_rank / num_classes)) * num_classes
    if n_rank < num_classes or (not args.same_images and n_score < num_classes):
        name, n = ("--n-rank", n_rank) if n_rank < num_classes else ("--n-score", n_score)
        raise InputError(f"{name} {n}: every class needs at least one image, so at least {num_classes} "
                         f"(the number of classes; the smallest class has {smallest} images)")
    need = math.ceil(n_rank / num_classes) + math.ceil(n_score / num_classes)
    if need > smallest:
        raise InputError(f"--n-rank {n_rank} and --n-score {n_score} need up to {need} images per class, but the "
                         f"smallest class has {smallest}; ask for at most {smallest * num_classes} in total")
    return n_rank, n_score


def _images(args, size: int | None) -> tuple[LabeledImages | None, Any, list[str], list[int], int]:
    """The listing (folder) or the images (book dataset): (images or None, listing, classes, counts, size)."""
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    if Path(args.data).expanduser().exists():
        listing = data.scan_folder(args.data, args.split, classes)
        return None, listing, list(listing.classes), list(listing.counts.values()), size or 224
    if args.data in data.DATASETS:
        if classes:
            raise InputError(f"--classes applies to an image folder; {args.data!r} has its own classes")
        spec = data.DATASETS[args.data]
        if size is not None and size not in spec.resolutions:
            raise InputError(f"--size {size} for {args.data!r}; valid: {', '.join(map(str, spec.resolutions))}")
        split = args.split or ("test" if "test" in spec.splits else spec.splits[0])
        imgs = data.load(args.data, split, resolution=size if size != spec.native else None, progress=not args.quiet)
        counts = torch.bincount(imgs.labels, minlength=len(imgs.classes)).tolist()
        return imgs, None, list(imgs.classes), counts, size or spec.native
    if "/" in args.data or args.data.startswith("."):
        raise InputError(f"image folder {args.data!r} does not exist")
    raise InputError(f"DATA {args.data!r} is neither an existing folder nor a dataset the book knows"
                     f"{_close(args.data, data.DATASETS)} (datasets: {', '.join(data.DATASETS)})")


def prepare(args) -> Prepared:
    """Read and check every input; raises InputError, DataError or ValueError naming the bad value."""
    if args.size is not None and args.size < 1:
        raise InputError(f"--size {args.size}: must be a positive number of pixels")
    if not args.dry_run and not args.out:
        raise InputError("--out DIR is required (or --dry-run to see the plan only)")
    if args.out and Path(args.out).exists() and not args.overwrite and not args.dry_run:
        raise InputError(f"--out {args.out} exists; choose another folder or add --overwrite")
    resolve_device(args.device)
    imgs, listing, classes, counts, size = _images(args, args.size)
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise InputError(f"classes without images in {args.data}: {', '.join(empty)}; every class needs images")
    spec = parse_model_spec(args.model)
    if args.num_classes is not None and args.num_classes != len(classes):
        raise InputError(f"--num-classes {args.num_classes}, but {args.data} has {len(classes)} classes "
                         f"({', '.join(classes[:10])}); they must match one to one")
    model = build_model(spec, len(classes))
    weights = load_weights(model, args.weights) if args.weights else None
    probe_model(model, size, classes)
    default_norm = "imagenet" if listing is not None else args.data
    if args.normalize is None and default_norm not in NAMED_NORMALIZATIONS:
        raise InputError(f"the book has no normalisation statistics for {args.data!r}: give --normalize (a name: "
                         f"{', '.join(NAMED_NORMALIZATIONS)}; or M,S; or M1,M2,M3,S1,S2,S3)")
    mean, std = parse_normalization(args.normalize or default_norm)
    n_rank, n_score = _counts_default(args, counts, len(classes))
    options = {}
    for item in args.option:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--option {item!r}: expected NAME=VALUE")
        options[name.strip()] = yaml.safe_load(value)
    config = dfm.DFMConfig(method=args.method, top=args.top[0], thresholds=tuple(args.top), patch_size=args.patch_size,
                           n_null=args.n_null, n_boot=args.n_boot, seed=args.seed, paper_tpr=args.tpr,
                           max_fpr=args.max_fpr, options=options)
    if args.patch_size > size:
        raise InputError(f"--patch-size {args.patch_size} exceeds the input size {size}")
    if listing is not None:
        per_class = math.ceil(n_rank / len(classes)) + math.ceil(n_score / len(classes))
        imgs = data.load_folder(args.data, size, split=args.split, classes=listing.classes, per_class=per_class,
                                seed=args.seed, resize=args.resize, on_error="skip" if args.skip_bad_images else "raise",
                                progress=not args.quiet)
    subject = Classifier(model, mean, std, tuple(classes))
    n_params = sum(p.numel() for p in model.parameters())
    where = str(listing.folder) if listing is not None else f"{args.data} ({imgs.split})"
    lines = [f"  data     {where}: {len(classes)} classes, {sum(counts):,} images found"
             + (f", {len(imgs)} read" if listing is not None else ""),
             f"  model    {spec}: {len(classes)} outputs, {n_params:,} parameters; "
             + (f"weights {weights['file']} (sha256 {weights['sha256'][:12]})" if weights
                else "no --weights: the architecture's random initial weights"),
             f"  input    3x{size}x{size}" + (f" ({args.resize})" if listing is not None else "")
             + f", mean {mean}, std {std}",
             f"  images   {n_rank} ranking + " + ("the same images (--same-images: inflates the TPR)" if args.same_images
                                                  else f"{n_score} scoring (disjoint, class-balanced, seed {args.seed})"),
             f"  method   {config.method}" + (f" {config.option}" if options else "") + f", patch {config.patch_size}, "
             f"DFM size {', '.join(f'{100 * t:g} %' for t in config.thresholds)}; null {config.n_null} masks, "
             f"{config.n_boot} bootstrap resamples",
             f"  device   {resolve_device(args.device)}, {torch.get_num_threads()} threads; cache {cache_root()}"]
    if args.out:
        lines.append(f"  out      {args.out}")
    skipped = imgs.extra.get("skipped") or []
    if skipped:
        lines.append(f"  skipped  {len(skipped)} unreadable: " + "; ".join(f"{f} ({w})" for f, w in skipped[:5]))
    record = {"model_spec": str(spec), "weights": weights, "data": args.data, "size": size,
              "normalize": args.normalize or default_norm, "device": str(resolve_device(args.device)),
              "threads": torch.get_num_threads(), "arguments": {k: v for k, v in vars(args).items() if k != "func"}}
    return Prepared(subject, imgs, n_rank, n_score, config, record, lines)


def _kwargs(p: Prepared, args) -> dict[str, Any]:
    return dict(n_rank=p.n_rank, n_score=p.n_score, config=p.config, tops=p.config.thresholds,
                same_images=args.same_images, batch_size=args.batch_size, device=args.device)


def _print_plan(p: Prepared, cost: CostEstimate) -> None:
    print("fslib shortcuts: plan", *p.lines, str(cost), sep="\n", flush=True)


def run(args) -> int:
    """Run the command; returns the exit status (0, 1 on failure, 2 on bad input, 130 on Ctrl-C)."""
    old_cache = os.environ.get("FSLIB_CACHE")
    if args.cache:
        os.environ["FSLIB_CACHE"] = str(Path(args.cache).expanduser().resolve())
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        if args.cache:
            if old_cache is None:
                os.environ.pop("FSLIB_CACHE", None)
            else:
                os.environ["FSLIB_CACHE"] = old_cache


def _run(args) -> int:
    try:
        p = prepare(args)
        cost = estimate(p.subject, p.images, probe=True, **_kwargs(p, args))
    except (InputError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    _print_plan(p, cost)
    if args.dry_run:
        return 0
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", UserWarning)
            warnings.showwarning = lambda msg, *a, **k: print(f"warning: {msg}", file=sys.stderr)
            result = analyse(p.subject, p.images, progress=not args.quiet, **_kwargs(p, args))
        record = {**p.record, "estimate": cost.to_dict(), "wall_seconds": time.perf_counter() - start}
        out = write_results(result, args.out, overwrite=args.overwrite, provenance=record)
    except KeyboardInterrupt:
        print(f"\ninterrupted after {format_seconds(time.perf_counter() - start)}: nothing was written to {args.out}; "
              "the ranking keeps what it finished in its checkpoint, and the same command resumes from it",
              file=sys.stderr)
        return INTERRUPTED
    t = result.table
    width = max(len(n) for n in t["name"])
    print(f"\nverdict: {result.verdict} (top {100 * result.top:g} %, {format_seconds(result.seconds)}; "
          f"estimated {format_seconds(cost.total_seconds)})")
    for _, r in t.iterrows():
        print(f"  {r['name']:<{width}}  TPR {r['tpr']:.2f}  FPR {r['fpr']:.2f}  null {r['null_tpr_p95']:.2f}  {r['verdict']}")
    print(f"results: {out}/ (open {out / 'report.html'})")
    return 0
