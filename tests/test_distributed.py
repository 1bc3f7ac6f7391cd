"""fslib.distributed: training with DDP and the sharded ablation equal a single process; a rank that
fails leaves a resumable run. Two gloo processes on the CPU, spawned inside the tests."""

import dataclasses
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from toy_data import toy_loader

from fslib import dfm, distributed, runs, train

pytestmark = pytest.mark.slow

CFG = train.TrainConfig(dataset="cifar10", model="resnet18", width=0.0625, epochs=2, batch_size=16,
                        scheduler="onecycle", lr=0.05, augment="flipcrop")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank, world_size, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)


def _train_worker(rank, world_size, port, cache, fail_at):
    _join(rank, world_size, port)
    os.environ["FSLIB_CACHE"] = cache
    hooks = []
    if fail_at and rank == 1:
        def hook(step, model):
            if step == fail_at:
                with open(os.path.join(cache, "failed"), "w") as f:
                    f.write(f"rank 1 stopped on purpose at step {step}")
                raise RuntimeError(f"rank 1 stopped on purpose at step {step}")
        hooks.append(hook)
    try:
        runs.get_or_train(CFG, device="cpu", progress=False, loader=toy_loader, hooks=hooks)
    finally:
        dist.destroy_process_group()


def _ablation_worker(rank, world_size, port, out):
    _join(rank, world_size, port)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3)).double()
    images = torch.randn(9, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(9) % 3
    maps = dfm.ablation_loss(model, images, labels, 3, batch_size=8, device="cpu", progress=False,
                             checkpoint=os.path.join(out, "ckpt.npz"))
    torch.save(maps, os.path.join(out, f"maps{rank}.pt"))
    dist.destroy_process_group()


def _first_order_worker(rank, world_size, port, out):
    from fslib.dfm.search.firstorder import first_order_loss

    _join(rank, world_size, port)
    model, images, labels = _tiny_problem()
    maps = first_order_loss(model, images, labels, 3, batch_size=2, device="cpu", progress=False)
    torch.save(maps, os.path.join(out, f"fo{rank}.pt"))
    dist.destroy_process_group()


def _mask_worker(rank, world_size, port, out):
    from fslib.dfm.search.maskscore import score_masks

    _join(rank, world_size, port)
    model, images, labels = _tiny_problem()
    scores = score_masks(model, images, labels, 3, _masks(), batch_size=2, device=torch.device("cpu"))
    torch.save(torch.stack([scores.tpr, scores.fpr, scores.soft_pos, scores.soft_neg, scores.loss]),
               os.path.join(out, f"ms{rank}.pt"))
    dist.destroy_process_group()


def _masks():
    return torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(2)) < 0.3


def _tiny_problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3)).double()
    images = torch.randn(9, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return model, images, torch.arange(9) % 3


def _spawn(fn, *args, world_size=2):
    mp.spawn(fn, args=(world_size, _free_port(), *args), nprocs=world_size, join=True)


def test_ddp_training_equals_one_process_of_the_same_global_batch(tmp_path, monkeypatch):
    _spawn(_train_worker, str(tmp_path / "ddp"), 0)
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path / "one"))
    one = runs.get_or_train(CFG, device="cpu", progress=False, loader=toy_loader)
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path / "ddp"))
    two = runs.get_or_train(CFG, device="cpu", progress=False, loader=refusing_loader)  # finished by the two ranks
    assert two.path.name == one.path.name and two.metrics["epochs"] == 2
    a, b = one.model.state_dict(), two.model.state_dict()
    init = train.Trainer(CFG, train.load_data(CFG, toy_loader), "cpu", progress=False).model.state_dict()
    assert a.keys() == b.keys()
    for k in a:  # equal up to the order of floating-point sums: far below what training moved
        if a[k].is_floating_point():
            moved, apart = (a[k] - init[k]).double().norm(), (a[k] - b[k]).double().norm()
            assert apart <= 0.01 * moved + 1e-6, (k, float(apart), float(moved))
    assert abs(one.metrics["test_acc"] - two.metrics["test_acc"]) <= 2 / 48  # at most two test images differ


def refusing_loader(*args, **kw):
    raise AssertionError("a finished run must not load data")


def test_a_failing_rank_leaves_a_resumable_run(tmp_path, monkeypatch):
    steps_per_epoch = int(96 * 0.9) // CFG.batch_size
    (tmp_path / "c").mkdir()
    # the spawner reports whichever rank's error it sees first (rank 1's own, or rank 0's lost
    # connection, worded by gloo in several ways): the record written by rank 1 says which failed
    with pytest.raises(Exception, match="rank 1 stopped on purpose|[Cc]onnection"):
        _spawn(_train_worker, str(tmp_path / "c"), steps_per_epoch + 2)
    assert (tmp_path / "c" / "failed").read_text() == f"rank 1 stopped on purpose at step {steps_per_epoch + 2}"
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path / "c"))
    path = runs.run_path(CFG)
    assert (path / "checkpoint.pt").exists() and not (path / "DONE").exists()
    state = torch.load(path / "checkpoint.pt", weights_only=True)
    assert state["trainer"]["epoch"] == 1  # the first epoch's checkpoint survived
    resumed = runs.get_or_train(CFG, device="cpu", progress=False, loader=toy_loader)  # resumed by one process
    assert resumed.metrics["epochs"] == 2


def test_sharded_ablation_equals_the_single_process_map(tmp_path):
    _spawn(_ablation_worker, str(tmp_path))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3)).double()
    images = torch.randn(9, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    single = dfm.ablation_loss(model, images, torch.arange(9) % 3, 3, batch_size=8, device="cpu", progress=False)
    for rank in (0, 1):
        assert torch.equal(torch.load(tmp_path / f"maps{rank}.pt", weights_only=True), single)
    assert sorted(p.name for p in tmp_path.glob("ckpt*.npz")) == ["ckpt.rank0of2.npz", "ckpt.rank1of2.npz"]


def test_alone_every_collective_is_a_no_op():
    assert distributed.world() == (0, 1) and distributed.is_main()
    t = torch.ones(3)
    assert distributed.all_reduce_sum(t) is t and torch.equal(t, torch.ones(3))
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    m = torch.nn.Sequential(torch.nn.BatchNorm2d(2))
    assert distributed.sync_batchnorm(m, torch.device("cpu")) is m
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        with pytest.MonkeyPatch.context() as mpatch:
            mpatch.setattr(distributed, "world", lambda: (0, 3))
            train.Trainer(dataclasses.replace(CFG, batch_size=16), train.load_data(CFG, toy_loader), "cpu",
                          progress=False)


def test_train_command_alone_and_under_torchrun(tmp_path, capsys):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from fslib.cli import main

    cfg = {"dataset": "syn_b1", "model": "resnet18", "width": 0.0625, "epochs": 1, "max_iters": 4, "n_train": 96,
           "n_test": 32, "batch_size": 16, "scheduler": "constant", "augment": "none"}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    env = {**os.environ, "FSLIB_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(Path(__file__).parents[1]),
           "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    out = subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-port", str(_free_port()), "-m", "fslib",
                          "train", str(tmp_path / "cfg.json"), "--device", "cpu"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("2 process(es)") == 1  # rank 0 alone reports
    runs_dir = tmp_path / "cache" / "runs"
    (run_dir,) = runs_dir.iterdir()
    assert (run_dir / "DONE").exists() and json.loads((run_dir / "metrics.json").read_text())["iterations"] == 4
    assert main(["train", "resnet", "--scale", "smoke"]) == 2
    assert "unknown recipe 'resnet'; valid: synthetic, cifar10, imagenette" in capsys.readouterr().err


def test_sharded_first_order_map_equals_the_single_process_map(tmp_path):
    from fslib.dfm.search.firstorder import first_order_loss

    _spawn(_first_order_worker, str(tmp_path))  # 5 batches of 2 images: rank 0 takes 3, rank 1 takes 2
    model, images, labels = _tiny_problem()
    single = first_order_loss(model, images, labels, 3, batch_size=2, device="cpu", progress=False)
    zero, one = (torch.load(tmp_path / f"fo{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(zero, one)  # every rank returns the reduced maps
    torch.testing.assert_close(zero, single, rtol=1e-12, atol=1e-12)  # up to the order of the float64 sums
    assert not torch.equal(single, torch.zeros_like(single))



def test_sharded_mask_scores_equal_the_single_process_scores(tmp_path):
    from fslib.dfm.search.maskscore import score_masks

    _spawn(_mask_worker, str(tmp_path))  # 5 groups of 2 images (one mask each: batch 2): 3 on rank 0, 2 on rank 1
    model, images, labels = _tiny_problem()
    one = score_masks(model, images, labels, 3, _masks(), batch_size=2, device=torch.device("cpu"))
    single = torch.stack([one.tpr, one.fpr, one.soft_pos, one.soft_neg, one.loss])
    zero, other = (torch.load(tmp_path / f"ms{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(zero, other)
    torch.testing.assert_close(zero, single, rtol=1e-12, atol=1e-12)
