"""Training throughput (images/s) at 32x32 on CPU, and the share of each step spent augmenting.

Usage::

    .venv/bin/python benchmarks/train_throughput.py                       # default models, 2 threads
    .venv/bin/python benchmarks/train_throughput.py --threads 1 --steps 10
    .venv/bin/python benchmarks/train_throughput.py --models resnet18:0.25 resnet18:1.0 vgg16:0.25
    .venv/bin/python benchmarks/train_throughput.py --precision fp32 --layout contiguous  # the paper's fp32

For each ``model:width`` it times the steps of :class:`fslib.train.Trainer`'s loop on
random uint8 CIFAR-sized images, batch 64, by default as the default profile trains
(bfloat16 autocast, channels-last, inside :func:`fslib.train.deterministic`): index the batch, augment
(:func:`fslib.augment.augment_batch`), normalise, forward, cross-entropy, backward, SGD
step. It prints

* images/s of the whole step (wall clock) and per CPU-second (``time.process_time``:
  on a shared machine the wall clock includes time the process waited for a core, the CPU
  time does not; with one thread, images per CPU-second estimate the idle single-core
  rate);
* the augmentation share of the step time (wall clock, and CPU time) for each pipeline:
  official pad + flip + RandomResizedCrop, flipcrop, and official + AutoAugment / AugMix
  applied per image, or per chunk of images with ``/chunk``.

Timings on a shared CPU are noisy: every figure is a median over the timed steps. With two
or more threads, set ``OMP_WAIT_POLICY=PASSIVE`` on a busy machine, or OpenMP's spinning
threads inflate both clocks.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18:0.25", "resnet18:0.5", "resnet18:1.0",
                                                         "resnet50:0.25", "vgg16:0.25", "alexnet:1.0"])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per model (after 2 warm-up steps)")
    parser.add_argument("--batch-size", type=int, default=64, help="paper: 64")
    parser.add_argument("--layout", choices=["channels_last", "contiguous"], default="channels_last",
                        help="memory layout (TrainConfig.channels_last; default: the default profile's)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16",
                        help="bf16: forward/loss under torch.autocast(bfloat16) "
                             "(TrainConfig.precision; default: the default profile's)")
    parser.add_argument("--no-compare", dest="compare", action="store_false",
                        help="skip timing the fp32 contiguous step side by side")
    parser.add_argument("--pipelines", nargs="+", default=["official", "flipcrop", "official+autoaugment",
                                                           "official+augmix", "official+augmix/8"],
                        help="kind[+extra[/chunk]]: chunk = images sharing one random op (default 1)")
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from fslib import augment as aug
    from fslib import models, train
    from fslib.constants import normalization

    torch.set_num_threads(args.threads)
    mean, std = normalization("cifar10")
    gen = torch.Generator().manual_seed(0)
    pool = torch.randint(0, 256, (4096, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (4096,), generator=gen)
    bs = args.batch_size
    layout_name = args.layout
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {bs}, 32x32, {layout_name}, {args.precision}, "
          f"{args.steps} timed steps")

    def batch(i):
        idx = torch.randperm(len(pool), generator=gen)[:bs]
        return pool[idx], labels[idx]

    def augment(x, y, pipeline):
        kind, _, extra = pipeline.partition("+")
        extra, _, chunk = extra.partition("/")
        return aug.augment_batch(x, y, gen, kind=kind, extra=extra or "none", chunk=int(chunk or 1))

    def timed(fn):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        return out, time.perf_counter() - w, time.process_time() - c

    # augmentation cost per batch, independent of the model
    aug_wall, aug_cpu = {}, {}
    for pipeline in args.pipelines:
        augment(*batch(0), pipeline)  # warm-up (imports, first-call allocations)
        samples = [timed(lambda i=i, p=pipeline: augment(*batch(i), p))[1:] for i in range(max(args.steps, 5))]
        aug_wall[pipeline] = statistics.median(s[0] for s in samples)
        aug_cpu[pipeline] = statistics.median(s[1] for s in samples)
        print(f"augment {pipeline:<22} {aug_wall[pipeline] * 1e3:7.1f} ms/batch wall, {aug_cpu[pipeline] * 1e3:7.1f} ms CPU")

    def time_steps(spec, precision, layout_name):
        """Median wall and CPU seconds of a training step (augmentation excluded)."""
        name, _, width = spec.partition(":")
        torch.manual_seed(0)
        model = models.build(name, 10, width=float(width or 1.0)).train()
        layout = torch.channels_last if layout_name == "channels_last" else torch.contiguous_format
        model = model.to(memory_format=layout)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
        x_aug = augment(*batch(0), "official")

        def step(x, y):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = F.cross_entropy(model(aug.normalize(x, mean, std).contiguous(memory_format=layout)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        samples = []
        with train.deterministic():  # as Trainer.fit
            for i in range(2):
                step(x_aug, batch(i)[1])
            for i in range(args.steps):
                x, y = batch(i)
                x = augment(x, y, "official")
                samples.append(timed(lambda x=x, y=y: step(x, y))[1:])
        params = models.count_parameters(model)
        return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples), params

    baseline = ("fp32", "contiguous")
    compare = args.compare and (args.precision, args.layout) != baseline
    print(f"\n{'model':<16}{'params':>9}{'img/s':>9}{'img/CPU-s':>11}"
          + (f"{'vs fp32':>9}" if compare else "") + "   augmentation share of a step: wall (CPU time)")
    for spec in args.models:
        wall, cpu, params = time_steps(spec, args.precision, args.layout)
        ratio = ""
        if compare:  # the paper's fp32, contiguous step, timed in the same run
            wall0, _, _ = time_steps(spec, *baseline)
            ratio = f"{wall0 / wall:>8.2f}x"
        shares = "  ".join(f"{p}: {aug_wall[p] / (aug_wall[p] + wall):.0%} ({aug_cpu[p] / (aug_cpu[p] + cpu):.0%})"
                           for p in args.pipelines)
        total_wall = wall + aug_wall.get("official", 0.0)
        total_cpu = cpu + aug_cpu.get("official", 0.0)
        print(f"{spec:<16}{params / 1e6:>8.2f}M{bs / total_wall:>9.0f}{bs / total_cpu:>11.0f}{ratio}   {shares}")
    if compare:
        print("\nvs fp32: the model step (no augmentation) in fp32 with the contiguous layout, divided by the step above.")
    print("\nimg/s and img/CPU-s include the official augmentation; share = augment / (augment + model step),"
          "\nfrom wall-clock medians and, in brackets, from CPU-time medians (steadier on a shared machine).")


if __name__ == "__main__":
    main()
