"""Benchmark: what checking a prepared CIFAR-10 against its digests costs a cached load.

Target (issue 14): verification must not make a cached load slower than about a second.
CIFAR-10 (train + test, 60,000 images, 184 MB of arrays) is prepared once into a temporary
cache; then fresh processes each load both splits, with the check (``SHA256SUMS``, the
default) and without it (the check replaced by a no-op), alternately. A second load in the
same process shows the once-per-process memo. The files are in the page cache (they were
just written), so this measures hashing, not the disk.

    FSLIB_DATA=/work/shared/data .venv/bin/python benchmarks/cache_verification.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def child(verify: bool) -> None:
    import torch

    from fslib import data

    torch.set_num_threads(1)
    if not verify:
        data.cache.artefacts.verify_folder = lambda folder, required=(): True
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        for split in ("train", "test"):
            data.load("cifar10", split, progress=False)
        times.append(time.perf_counter() - t0)
    print(f"{times[0]:.4f} {times[1]:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per setting")
    parser.add_argument("--child", choices=["verify", "skip"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child == "verify")
        return
    with tempfile.TemporaryDirectory(prefix="fslib-bench-") as tmp:
        env = {**os.environ, "FSLIB_CACHE": tmp}
        prep = subprocess.run([sys.executable, "-c", "from fslib import data; data.prepare('cifar10', progress=False)"],
                              env=env, capture_output=True, text=True)
        if prep.returncode != 0:
            sys.exit(prep.stderr)
        results: dict[str, list[tuple[float, float]]] = {"verify": [], "skip": []}
        for _ in range(args.rounds):
            for mode in results:
                out = subprocess.run([sys.executable, __file__, "--child", mode], env=env, capture_output=True,
                                     text=True, check=True).stdout.split()
                results[mode].append((float(out[0]), float(out[1])))
        size = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(tmp) for f in files
                   if f in ("images.npy", "labels.npy", "extra.npz", "meta.json"))
    first = {m: statistics.median(r[0] for r in rs) for m, rs in results.items()}
    second = {m: statistics.median(r[1] for r in rs) for m, rs in results.items()}
    print(f"prepared CIFAR-10 train + test: {size / 1e6:.0f} MB checked against SHA256SUMS")
    print(f"first load in a fresh process: {first['verify']:.2f} s with the check, {first['skip']:.2f} s without "
          f"(median of {args.rounds}): the check costs {first['verify'] - first['skip']:.2f} s; target < ~1 s")
    print(f"second load in the same process: {second['verify'] * 1000:.0f} ms with the check, "
          f"{second['skip'] * 1000:.0f} ms without (hashed once per process)")


if __name__ == "__main__":
    main()
