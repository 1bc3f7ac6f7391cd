"""Benchmark: prepare CIFAR-10 (train + test) from ``cifar10_jpeg.zip``, then load the cache.

Targets (issue 5): preparation under 60 s on 2 cores, a load of the prepared cache under 1 s.
The cache goes to a temporary folder (``FSLIB_CACHE`` is pointed there), so the
repository's cache is not touched. The archive's sha256 is checked inside the timed
preparation, as on a user's first run.

    FSLIB_DATA=/work/shared/data .venv/bin/python benchmarks/data_prepare.py
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10", help="registry name (default cifar10)")
    parser.add_argument("--resolution", type=int, default=None, help="square size (default: the dataset's own)")
    parser.add_argument("--loads", type=int, default=5, help="cached loads to time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fslib-bench-") as tmp:
        os.environ["FSLIB_CACHE"] = tmp
        import torch

        from fslib import data

        torch.set_num_threads(2)
        t0 = time.perf_counter()
        folders = data.prepare(args.dataset, resolution=args.resolution, progress=False)
        prepare_s = time.perf_counter() - t0
        sizes = {f.name: sum(p.stat().st_size for p in f.iterdir()) / 2**20 for f in folders}
        times = []
        for _ in range(args.loads):
            t0 = time.perf_counter()
            sets = [data.load(args.dataset, split, resolution=args.resolution) for split in data.DATASETS[args.dataset].splits]
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        peak = max(int(s.images.numpy().max()) for s in sets)  # reads every byte of the memory maps
        touch_s = time.perf_counter() - t0
        total = sum(len(s) for s in sets)
        print(f"dataset: {args.dataset}, source: {sets[0].source}")
        print(f"prepare (sha256 + decode + write, all splits): {prepare_s:.1f} s for {total} images "
              f"({total / prepare_s:.0f} img/s); target < 60 s")
        for name, mib in sizes.items():
            print(f"  cache {name}: {mib:.0f} MiB")
        print(f"load of the prepared cache (all splits): median {sorted(times)[len(times) // 2] * 1000:.1f} ms, "
              f"max {max(times) * 1000:.1f} ms over {args.loads} loads; target < 1 s")
        print(f"first pass over every pixel of the memory maps: {touch_s:.2f} s (max {peak})")


if __name__ == "__main__":
    main()
