"""Two-process DistributedDataParallel (gloo, CPU) through the real training entry point."""
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

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
