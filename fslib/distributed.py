"""Several processes with ``torch.distributed``: who am I, summing across ranks, and BatchNorm that sees
the whole batch.

fslib does not schedule anything itself: ``torchrun --nproc-per-node N -m fslib ...`` starts the
processes and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_from_env` joins the
process group (NCCL on CUDA, gloo on CPU). Everything here is a no-op in a single process, so the
library's code paths are the same with and without ``torchrun``.

* :func:`world` / :func:`is_main`: rank and number of processes (``(0, 1)`` without torchrun);
* :func:`barrier`, :func:`all_reduce_sum`, :func:`broadcast_object`: the three collectives fslib needs;
* :func:`local_device`: ``device="auto"`` becomes this process's GPU (``cuda:LOCAL_RANK``);
* :func:`sync_batchnorm`: BatchNorm layers that normalise with the statistics of the whole global
  batch, as a single process would (``nn.SyncBatchNorm`` on a GPU; on a CPU, where PyTorch's
  SyncBatchNorm refuses to run, :class:`CPUSyncBatchNorm`, built on a differentiable all-reduce).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` without an initialised process group.

    >>> world()
    (0, 1)
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes shared files (rank 0, or the only process)."""
    return world()[0] == 0


def launched_by_torchrun() -> bool:
    """Whether the environment says this is one of several processes (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str | torch.device = "auto") -> bool:
    """Join the process group that ``torchrun`` describes in the environment; False when alone.

    The backend is NCCL when this process uses a GPU, gloo otherwise. Idempotent.
    """
    if not launched_by_torchrun() or not dist.is_available():
        return False
    if not dist.is_initialized():
        wants_cuda = str(device) == "auto" and torch.cuda.is_available() or str(device).startswith("cuda")
        backend = "nccl" if wants_cuda else "gloo"
        if wants_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return True


def local_device(device: str | torch.device = "auto") -> str | torch.device:
    """``"auto"`` under torchrun with GPUs becomes this process's own GPU, ``cuda:LOCAL_RANK``."""
    if str(device) == "auto" and launched_by_torchrun() and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if world()[1] > 1:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the ranks, in place, and return it (unchanged in a single process).

    NCCL reduces GPU tensors only: a CPU tensor (the ablation's and first-order maps' float64
    sums) goes through this rank's GPU and back.
    """
    if world()[1] > 1:
        if dist.get_backend() == "nccl" and t.device.type == "cpu":
            on_gpu = t.to(f"cuda:{torch.cuda.current_device()}")
            dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
            t.copy_(on_gpu.cpu())
        else:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (a picklable value sent by torch.distributed, never a file)."""
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks, differentiable: the gradient of a rank's input is the sum of the
    gradients of every rank's output."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = grad.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch over all ranks.

    The per-channel sums of ``x`` and ``x**2`` and the element count are summed over the ranks
    with a differentiable all-reduce, so the backward pass sees the
    whole batch too. Outside training, or alone, it is a plain BatchNorm2d. The variance is
    ``E[x^2] - E[x]^2`` (one pass), so results match a single process up to rounding.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world()[1] > 1):
            return super().forward(x)
        xf = x.float()
        count = torch.tensor([xf.numel() / xf.shape[1]], dtype=xf.dtype, device=xf.device)
        stats = _AllReduceSum.apply(torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count]))
        c = xf.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(mean.detach() * m)
            self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)) * m)
        y = (xf - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm2d normalising over the global batch (no-op in a single process).

    GPU: ``nn.SyncBatchNorm``. CPU: :class:`CPUSyncBatchNorm` (PyTorch's refuses CPU tensors).
    The weights, buffers and their names are kept, so checkpoints are interchangeable with a
    single-process run.
    """
    if world()[1] == 1:
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def convert(module: nn.Module) -> nn.Module:
        if type(module) is nn.BatchNorm2d:
            new = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats)
            new.load_state_dict(module.state_dict())
            return new
        for name, child in module.named_children():
            setattr(module, name, convert(child))
        return module

    return convert(model)


__all__ = ["world", "is_main", "launched_by_torchrun", "init_from_env", "local_device", "barrier", "all_reduce_sum",
           "broadcast_object", "CPUSyncBatchNorm", "sync_batchnorm"]
