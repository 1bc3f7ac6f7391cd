"""Command line: ``python -m fslib run|build|profiles|data|shortcuts``.

Bad input (an unknown profile, chapter, parameter or dataset) fails at once with a message
listing the valid names and exit status 2, before anything executes.
"""

from __future__ import annotations

import argparse
import sys

from fslib import book, data
from fslib.shortcuts import command as shortcuts_command

USAGE_ERROR = 2


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

    build = sub.add_parser("build", help="build the HTML book from the executed notebooks")
    build.add_argument("--all", action="store_true", help="rebuild every page (jupyter-book --all)")
    build.add_argument("--keep-going", action="store_true", help="report every warning before failing")
    build.add_argument("--no-strict", action="store_true", help="do not turn warnings into errors")
    build.add_argument("--output", default=None, help="jupyter-book --path-output (default: the repository)")

    sub.add_parser("profiles", help="list the profiles and the chapters' parameters")

    data = sub.add_parser("data", help="dataset status and preparation")
    dsub = data.add_subparsers(dest="data_command", required=True)
    dsub.add_parser("list", help="status of every dataset: found, checksum, prepared")
    prep = dsub.add_parser("prepare", help="decode a dataset once into the cache")
    prep.add_argument("name")
    prep.add_argument("--resolution", type=int, default=None)

    shortcuts_command.add_arguments(sub.add_parser(
        "shortcuts", help="frequency shortcuts of your own model on an image folder",
        description="Rank Dominant Frequency Maps of any classifier on some images of DATA, test them on others, "
                    "and write DFMs, a TPR/FPR table, figures and a report to --out."))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "shortcuts":
        return shortcuts_command.run(args)
    try:
        if args.command == "run":
            overrides = book.parse_assignments(args.parameter)
            plans = book.plan_run(args.profile, args.chapter, overrides)
            book.run_chapters(plans, args.profile, force=args.force)
        elif args.command == "build":
            index = book.build(all_pages=args.all, strict=not args.no_strict, keep_going=args.keep_going, output=args.output)
            print(f"[fslib] book built: {index}")
        elif args.command == "profiles":
            for name in book.available_profiles():
                print(f"{name}: {book.load_profile(name)['description']}")
            for chapter in book.discover_chapters():
                print(f"chapter {chapter.number} ({chapter.stem}): {book.chapter_parameters(chapter)}")
        elif args.command == "data":
            return _data(args)
    except book.UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except book.ChapterFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _data(args) -> int:
    if args.data_command == "list":
        print(data.format_status(data.status()))
        return 0
    if args.name not in data.DATASETS:
        print(f"error: unknown dataset {args.name!r}; valid: {', '.join(data.DATASETS)}", file=sys.stderr)
        return USAGE_ERROR
    kwargs = {"resolution": args.resolution} if args.resolution else {}
    try:
        data.prepare(args.name, **kwargs)
    except data.DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # e.g. a resolution the dataset does not offer
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    return 0
