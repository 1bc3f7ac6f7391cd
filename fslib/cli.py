"""Command line: ``python -m fslib run|build|profiles|export|data|train|shortcuts``.

``train`` also runs under ``torchrun --nproc-per-node N -m fslib train ...`` (one process per GPU,
or per CPU process with gloo): the processes train one run together (:mod:`fslib.distributed`).

Bad input (an unknown profile, chapter, parameter or dataset, a value that is not YAML, a
broken profile file) fails at once with a message listing the valid names and exit status
2, before anything executes. ``run`` and ``build`` hold the checkout's lock
(:func:`fslib.book.checkout_lock`): a second one refuses with exit status 1, naming the
first. Ctrl-C (or a SIGTERM, as from ``timeout`` or a cancelled CI job) stops the step in
progress, cleans it up, prints one line and exits with status 130.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from fslib import book, data, distributed, paths, recipes, runs, train
from fslib.shortcuts import command as shortcuts_command

USAGE_ERROR = 2
INTERRUPTED = 130  # as a shell reports a process stopped by SIGINT


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fslib", description="fsbook: run chapters, build the book, manage data")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute chapters with papermill")
    run.add_argument("--profile", default="default", help="smoke | default | paper (default: %(default)s)")
    run.add_argument("--chapter", action="append", default=[], metavar="N",
                     help="chapter number or name; repeatable (default: all)")
    run.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                     help="override a chapter parameter (YAML value)")
    run.add_argument("--force", action="store_true", help="execute even when the cached notebook is up to date")
    run.add_argument("--output", default=None, metavar="DIR",
                     help="folder for the executed notebooks (default: book/executed, or with -p "
                          "_build/sweeps/<profile>-<overrides>/ so that a sweep never overwrites the book)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    build = sub.add_parser("build", help="build the HTML book from the executed notebooks")
    build.add_argument("--all", action="store_true", help="rebuild every page (jupyter-book --all)")
    build.add_argument("--keep-going", action="store_true", help="report every warning before failing")
    build.add_argument("--no-strict", action="store_true", help="do not turn warnings into errors")
    build.add_argument("--output", default=None, help="jupyter-book --path-output (default: the repository)")

    sub.add_parser("profiles", help="list the profiles and the chapters' parameters")

    export = sub.add_parser("export", help="papermill-ready copies: chapters as .ipynb, profiles as papermill -f files")
    export.add_argument("--profile", default="default", help="smoke | default | paper (default: %(default)s)")
    export.add_argument("--chapter", action="append", default=[], metavar="N", help="chapter number or name; repeatable")
    export.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                        help="override a chapter parameter (YAML value)")
    export.add_argument("--output", default=None, metavar="DIR", help="folder (default: _build/papermill)")

    data = sub.add_parser("data", help="dataset status and preparation")
    dsub = data.add_subparsers(dest="data_command", required=True)
    dsub.add_parser("list", help="status of every dataset: found, checksum, prepared")
    prep = dsub.add_parser("prepare", help="decode a dataset once into the cache")
    prep.add_argument("name")
    prep.add_argument("--resolution", type=int, default=None)

    fit = sub.add_parser("train", help="train a recipe (or a TrainConfig JSON) into the run cache; torchrun-aware")
    fit.add_argument("recipe", help="synthetic | cifar10 | imagenette, or a .json file holding TrainConfig fields")
    fit.add_argument("--dataset", default="syn_b1", help="synthetic recipe: syn_b1..syn_b4 (default: %(default)s)")
    fit.add_argument("--model", default="resnet18", help="cifar10 / imagenette recipes: fslib.models name")
    fit.add_argument("--extra-augment", default="none", help="cifar10 recipe: none, autoaugment, augmix, ampswap")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--scale", default="default", help="smoke | default | paper (default: %(default)s)")
    fit.add_argument("--device", default="auto", help="auto (CUDA when present; under torchrun this rank's GPU), cpu, cuda")
    shortcuts_command.add_arguments(sub.add_parser(
        "shortcuts", help="frequency shortcuts of your own model on an image folder",
        description="Rank Dominant Frequency Maps of any classifier on some images of DATA, test them on others, "
                    "and write DFMs, a TPR/FPR table, figures and a report to --out."))
    return parser


def _train_config(args) -> "train.TrainConfig":
    """The TrainConfig a ``train`` command asks for (ValueError naming what is wrong)."""
    if args.recipe.endswith(".json"):
        path = Path(args.recipe)
        if not path.is_file():
            raise ValueError(f"config file {path} not found")
        try:
            fields = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"config file {path} is not valid JSON ({exc})") from None
        return train.TrainConfig.from_dict(fields.get("config", fields))  # a run's config.json works too
    if args.recipe == "synthetic":
        return recipes.synthetic(args.dataset, seed=args.seed, scale=args.scale)
    if args.recipe == "cifar10":
        return recipes.cifar10(args.model, args.extra_augment, seed=args.seed, scale=args.scale)
    if args.recipe == "imagenette":
        return recipes.imagenette(args.model, seed=args.seed, scale=args.scale)
    raise ValueError(f"unknown recipe {args.recipe!r}; valid: synthetic, cifar10, imagenette or a .json config file")


def _train(args) -> int:
    try:
        cfg = _train_config(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    distributed.init_from_env(args.device)
    run = runs.get_or_train(cfg, device=args.device, progress=distributed.is_main())
    if distributed.is_main():
        print(f"[fslib] {run.path} ({distributed.world()[1]} process(es)): test accuracy {run.metrics['test_acc']:.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    paths.pin_environment()  # a relative FSLIB_CACHE / FSLIB_DATA means the same folder here and in the kernels
    if args.command == "shortcuts":
        return shortcuts_command.run(args)
    previous = _terminate_like_ctrl_c()
    try:
        if args.command == "run":
            _run(args)
        elif args.command == "build":
            with book.checkout_lock("fslib build"):
                index = book.build(all_pages=args.all, strict=not args.no_strict, keep_going=args.keep_going, output=args.output)
            print(f"[fslib] book built: {index}")
        elif args.command == "profiles":
            for name in book.available_profiles():
                print(f"{name}: {book.load_profile(name)['description']}")
            for chapter in book.discover_chapters():
                print(f"chapter {chapter.number} ({chapter.stem}): {book.chapter_parameters(chapter)}")
        elif args.command == "export":
            _export(args)
        elif args.command == "data":
            return _data(args)
        elif args.command == "train":
            return _train(args)
    except book.UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except (book.ChapterFailed, book.Busy, book.DataMissing) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(_interrupted(args.command), file=sys.stderr)
        return INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _interrupted(command: str) -> str:
    return (f"\ninterrupted: `fslib {command}` stopped (Ctrl-C or SIGTERM); what was finished is kept, "
            "the step in progress was discarded (no partial notebook or cache is left)")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _terminate_like_ctrl_c():
    """SIGTERM cleans up as Ctrl-C does (the kernel is shut down, partial files removed);
    returns the handler it replaced (None outside the main thread, where nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt)


def _run(args) -> None:
    """``fslib run``: validate everything, warn about the cost, check the data, then execute."""
    overrides = book.parse_assignments(args.parameter)
    plans = book.plan_run(args.profile, args.chapter, overrides)
    warning = book.cost_warning(args.profile, plans)
    if warning:
        print(warning, file=sys.stderr)
    book.check_data(plans)
    with book.checkout_lock(f"fslib run --profile {args.profile}"):
        book.run_chapters(plans, args.profile, force=args.force, output=args.output, progress=not args.quiet)


def _export(args) -> None:
    """``fslib export``: chapters and their parameters for papermill, and the commands that run them."""
    plans = book.plan_run(args.profile, args.chapter, book.parse_assignments(args.parameter))
    commands = book.export(plans, args.profile, args.output)
    print(f"[fslib] wrote {2 * len(plans)} file(s); run a chapter with papermill:")
    for command in commands:
        print(f"  {command}")


def _data(args) -> int:
    if args.data_command == "list":
        print(data.format_status(data.status()))
        return 0
    if args.name not in data.DATASETS:
        print(f"error: unknown dataset {args.name!r}; valid: {', '.join(data.DATASETS)}", file=sys.stderr)
        return USAGE_ERROR
    kwargs = {"resolution": args.resolution} if args.resolution is not None else {}  # 0 is an error, not "default"
    try:
        data.prepare(args.name, **kwargs)
    except data.DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # e.g. a resolution the dataset does not offer
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    return 0
