"""Two-process DistributedDataParallel (gloo, CPU) through the real training entry point."""
import os
import signal
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from models import build_model, register_model
from tests.test_engine_train import make_tiny_data, tiny_train_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, folder: str, img_dir: str, kernel_path: str):
    """What torchrun does: environment variables, then the normal training call."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from engine.train import train

    cfg = tiny_train_config(os.path.join(folder, "ddp"), img_dir, kernel_path, epochs=2)
    cfg["train_dataset"]["batch_size"] = 4          # global batch: 2 per process
    result = train(cfg)
    torch.save({"weights": result.model.state_dict(), "losses": [h["loss"] for h in result.history],
                "exported": result.exported}, os.path.join(folder, f"rank{rank}.pt"))


@pytest.mark.slow
def test_two_process_gloo_ddp_keeps_ranks_identical_and_matches_one_process(tmp_path):
    torch.set_num_threads(1)
    folder = str(tmp_path)
    img_dir, kernel_path = make_tiny_data(folder, n_images=8)
    context = mp.start_processes(_worker, args=(2, _free_port(), folder, img_dir, kernel_path), nprocs=2,
                                 join=False, start_method="spawn")
    deadline = time.time() + 240            # a deadlock must fail the test, not hang CI
    while not context.join(timeout=5):
        if time.time() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail("DDP workers did not finish within 240 s (deadlock?)")
    ranks = [torch.load(os.path.join(folder, f"rank{r}.pt"), weights_only=True) for r in range(2)]
    assert len(ranks[0]["losses"]) == 4                          # 8 images / global batch 4 × 2 epochs
    for key, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][key]), f"ranks differ in {key}"
    # only rank 0 writes checkpoints and exported weights
    assert ranks[0]["exported"] and not ranks[1]["exported"]
    assert os.path.isfile(os.path.join(folder, "ddp", "ckpt", "tiny", "last.pth"))

    # The same global batch in one process takes the same steps (the NRL-GDN loss divides by the
    # global batch size), up to float rounding of the gradient all-reduce.
    from engine.train import train

    cfg = tiny_train_config(os.path.join(folder, "single"), img_dir, kernel_path, epochs=2)
    cfg["train_dataset"]["batch_size"] = 4
    single = train(cfg).model.state_dict()
    for key, value in ranks[0]["weights"].items():
        torch.testing.assert_close(value, single[key], rtol=1e-4, atol=1e-5, msg=f"DDP vs one process: {key}")


# ------------------------------------------------- per-rank RNG, synchronised early stop, NaN on rank 1
class RandomlyPerturbed(torch.nn.Module):
    """A 3×3 conv of y plus fresh noise in training: every step draws from the process's torch generator."""
    input_keys = ("y",)
    default_loss = "l1"

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, y):
        if self.training:
            y = y + 0.1 * torch.randn_like(y)
        return self.conv(y)


register_model("test_randomly_perturbed", "tests.test_ddp:RandomlyPerturbed")


def _early_stop_case():
    """A tiny NRL-GDN and two samples on which the published rule stops after different numbers of steps."""
    from utils.operators import conv_circular

    g = torch.Generator().manual_seed(0)
    x = F.interpolate(torch.rand(2, 3, 5, 5, generator=g), size=(32, 32), mode="bilinear")
    k = torch.rand(2, 1, 7, 7, generator=g) + 0.1
    k = k / k.sum(dim=(-2, -1), keepdim=True)
    y = conv_circular(x, k)
    y[1] += 0.1 * torch.randn(y[1].shape, generator=g)
    torch.manual_seed(0)
    model = build_model("NRL_GDN", num_steps=10, stop_threshold=-0.0044, r_channels=(4, 6, 8, 10), r_blocks=1,
                        hd_channels=4).train()
    return model, y, k


def _steps_taken(model, y, k, synchronise=False) -> int:
    model.early_stop_sync = synchronise
    with torch.no_grad():
        model(y, k)
    return model.last_num_steps


def _random_model_config(folder, run, img_dir, kernel_path, **options):
    options = {"epochs": 3, "epoch_val": 0, **options}
    cfg = tiny_train_config(os.path.join(folder, run), img_dir, kernel_path, **options)
    cfg["model"].update(model_select="test_randomly_perturbed", options={})
    cfg["train_dataset"]["batch_size"] = 4          # 2 per process, 2 steps per epoch
    return cfg


def _readiness_worker(rank: int, world: int, ports, folder: str, img_dir: str, kernel_path: str):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)
    import tests.test_gpu_ready  # noqa: F401  (registers the loss test_nan_at_steps)
    from engine.train import train

    out = {}
    os.environ["MASTER_PORT"] = str(ports[0])
    torch.distributed.init_process_group("gloo")
    model, y, k = _early_stop_case()
    out["steps"] = {sync: _steps_taken(model, y[rank:rank + 1], k[rank:rank + 1], sync) for sync in (False, True)}
    torch.distributed.destroy_process_group()

    os.environ["MASTER_PORT"] = str(ports[1])
    ref = train(_random_model_config(folder, "ref", img_dir, kernel_path))

    def interrupt_rank0_at_3(step, loss):
        if step == 3 and rank == 0:
            os.kill(os.getpid(), signal.SIGINT)
    os.environ["MASTER_PORT"] = str(ports[2])
    first = train(_random_model_config(folder, "resumed", img_dir, kernel_path), step_callback=interrupt_rank0_at_3)
    os.environ["MASTER_PORT"] = str(ports[3])
    second = train(_random_model_config(folder, "resumed", img_dir, kernel_path, resume=True))
    out.update(ref=[h["loss"] for h in ref.history], first=[h["step"] for h in first.history], status=first.status,
               resumed=[h["loss"] for h in first.history + second.history],
               same_weights=all(torch.equal(v, second.model.state_dict()[key])
                                for key, v in ref.model.state_dict().items()))

    os.environ["MASTER_PORT"] = str(ports[4])
    cfg = tiny_train_config(os.path.join(folder, "nan"), img_dir, kernel_path, epoch_val=0)
    cfg["train_dataset"]["batch_size"] = 4
    cfg["model"].update(loss="test_nan_at_steps", loss_options={"nan_steps": [2], "nan_rank": 1})
    try:
        train(cfg)
    except FloatingPointError as err:
        out["nan"] = str(err)
    torch.save(out, os.path.join(folder, f"ready{rank}.pt"))


@pytest.mark.slow
def test_ddp_ranks_keep_their_own_random_streams_and_agree_on_stops_and_nans(tmp_path):
    """Two gloo processes: (1) the published early stop counts steps per process, early_stop_sync as one
    process on the whole batch; (2) distinct per-rank random streams, saved per rank, so a run interrupted
    (SIGINT on rank 0 only) and resumed equals an uninterrupted one, while a resume with another number
    of processes says it is not exact; (3) a NaN loss on rank 1 only is written by rank 0 as nonfinite.pth
    and reported truthfully by both ranks."""
    import tests.test_gpu_ready  # noqa: F401  (registers the loss test_nan_at_steps in this process too)

    torch.set_num_threads(1)
    folder = str(tmp_path)
    img_dir, kernel_path = make_tiny_data(folder, n_images=8)
    context = mp.start_processes(_readiness_worker, args=(2, [_free_port() for _ in range(5)], folder, img_dir,
                                                          kernel_path), nprocs=2, join=False, start_method="spawn")
    deadline = time.time() + 300
    while not context.join(timeout=5):
        if time.time() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail("DDP workers did not finish within 300 s (deadlock?)")
    ranks = [torch.load(os.path.join(folder, f"ready{r}.pt"), weights_only=True) for r in range(2)]

    model, y, k = _early_stop_case()
    alone = [_steps_taken(model, y[r:r + 1], k[r:r + 1]) for r in range(2)]
    assert alone[0] != alone[1]                                     # the two shares stop differently
    assert [r["steps"][False] for r in ranks] == alone              # published: each process on its own
    assert [r["steps"][True] for r in ranks] == [_steps_taken(model, y, k)] * 2   # synchronised: the whole batch

    for r in ranks:
        assert r["status"] == "interrupted" and r["first"] == [1, 2, 3, 4]   # rank 0's signal, agreed at step 4
        assert r["resumed"] == r["ref"] and r["same_weights"]
    assert ranks[0]["ref"] != ranks[1]["ref"]
    state = torch.load(os.path.join(folder, "resumed", "ckpt", "tiny", "last.pth"), weights_only=True)
    assert state["world_size"] == 2 and len(state["rng_per_rank"]) == 2
    assert not torch.equal(state["rng_per_rank"][0]["torch"], state["rng_per_rank"][1]["torch"])

    from engine.train import train
    result = train(_random_model_config(folder, "resumed", img_dir, kernel_path, resume=True, epochs=4))
    log = open(os.path.join(result.run_dir, "train_log.txt")).read()
    assert "resume is not exact: the checkpoint was written by 2 process(es), this run has 1" in log

    saved = os.path.join(folder, "nan", "ckpt", "tiny", "nonfinite.pth")
    assert ranks[1]["nan"] == f"loss became nan at step 2 (epoch 1) on rank 1; the state before that step is saved to {saved}"
    assert ranks[0]["nan"] == f"loss became non-finite at step 2 on another process; the state before that step is saved to {saved}"
    assert torch.load(saved, weights_only=True)["step"] == 1
