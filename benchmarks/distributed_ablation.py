"""The exact ablation sharded over processes (``torch.distributed``, gloo) against one process, in one run.

Usage::

    .venv/bin/python benchmarks/distributed_ablation.py                 # ~2-4 minutes on an idle 2-core CPU
    .venv/bin/python benchmarks/distributed_ablation.py --images 20 --procs 1 2

For each process count P it spawns P processes (gloo on the CPU, one thread each, so P
processes use P cores; the single process is given the same total number of threads), runs
``fslib.dfm.ablation_loss`` of the book's CIFAR-style ResNet18 x0.25 (random weights: the cost
does not depend on them) on the same images, and prints the wall time, the speed-up over one
process, the parallel efficiency and whether the maps are identical to the one-process maps.

On a 2-core machine two processes cannot be much faster than one process with two threads:
the ratio measures the overhead of sharding (process start, per-rank spectra, the final
all-reduce). The expected scaling on N GPUs follows from the per-device throughput: the units
are independent, so the time is about ``T_1 / N`` plus the all-reduce of a ``U x C`` float64
table (tens of kilobytes), i.e. near-linear until the per-rank share is too small to fill a
device.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fslib import dfm, models


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs(n: int):
    torch.manual_seed(0)
    model = models.build("resnet18", 10, width=0.25)
    images = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(n) % 10
    return model, images, labels


def _worker(rank: int, world_size: int, port: int, n: int, threads: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    if world_size > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    model, images, labels = _inputs(n)
    if world_size > 1:
        dist.barrier()
    t0 = time.perf_counter()
    maps = dfm.ablation_loss(model, images, labels, 10, device="cpu", progress=False)
    seconds = time.perf_counter() - t0
    if rank == 0:
        torch.save({"maps": maps, "seconds": seconds}, os.path.join(out, f"p{world_size}.pt"))
    if world_size > 1:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20, help="ranking images (2 per class by default)")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    units = len(dfm.ablation_units(32, 32))
    print(f"torch {torch.__version__}, {cores} CPU cores; ResNet18 x0.25, {args.images} images x {units} pairs")
    results = {}
    with tempfile.TemporaryDirectory() as out:
        for p in args.procs:
            threads = max(1, max(args.procs) // p)  # the same total number of threads for every P
            t0 = time.perf_counter()
            mp.spawn(_worker, args=(p, _port(), args.images, threads, out), nprocs=p, join=True)
            wall = time.perf_counter() - t0
            r = torch.load(os.path.join(out, f"p{p}.pt"), weights_only=True)
            results[p] = (r["seconds"], wall, r["maps"])
    base_seconds, _, base_maps = results[min(results)]
    print(f"{'processes':>9} {'threads each':>12} {'ablation s':>11} {'with start s':>13} {'speed-up':>9} "
          f"{'efficiency':>10}  maps")
    for p, (seconds, wall, maps) in results.items():
        speedup = base_seconds / seconds
        same = "identical" if torch.equal(maps, base_maps) else f"max diff {float((maps - base_maps).abs().max()):.2e}"
        print(f"{p:>9} {max(1, max(args.procs) // p):>12} {seconds:>11.1f} {wall:>13.1f} {speedup:>9.2f} "
              f"{speedup / (p / min(results)):>10.2f}  {same}")
    per_image = base_seconds / args.images
    print(f"\none process: {per_image:.2f} s per image ({units} ablations each); on N devices expect about "
          f"{per_image:.2f} / N s per image plus a fixed all-reduce of {units * 10 * 8 / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
