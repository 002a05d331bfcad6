"""Two gloo processes, each with its shard of the data: every rank's compute() equals one process on all of it.

Rank 1's shard ends with a duplicate of image 0, as ``DistributedSampler`` pads it; the duplicate
is dropped with ``sample_mask``. The shards have different sizes (3 + 2 real images). The
data-set losses (:class:`LossMean`) are checked the same way, on unpadded shards of 3 and 2 images.
"""

from __future__ import annotations

import datetime
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mtlora.losses import MultiTaskLoss
from mtlora.metrics import LossMean, MultiTaskEvaluator

TASKS = ["semseg", "human_parts", "sal", "normals", "depth", "edge"]
NUM_IMAGES, SIZE = 5, 12


def dataset() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Deterministic logits and labels for NUM_IMAGES images and every task."""
    gen = torch.Generator().manual_seed(123)
    n, s = NUM_IMAGES, SIZE
    outputs = {
        "semseg": torch.randn(n, 5, s, s, generator=gen),
        "human_parts": torch.randn(n, 7, s, s, generator=gen),
        "sal": torch.randn(n, 1, s, s, generator=gen),
        "normals": torch.randn(n, 3, s, s, generator=gen),
        "depth": 3 * torch.rand(n, 1, s, s, generator=gen),
        "edge": torch.randn(n, 1, s, s, generator=gen),
    }
    semseg = torch.randint(0, 5, (n, s, s), generator=gen)
    semseg[torch.rand(n, s, s, generator=gen) < 0.2] = 255
    normals = torch.nn.functional.normalize(torch.randn(n, 3, s, s, generator=gen), dim=1)
    normals[1, :, :4] = 255
    batch = {
        "semseg": semseg,
        "human_parts": torch.randint(0, 7, (n, s, s), generator=gen),
        "sal": (torch.rand(n, 1, s, s, generator=gen) < 0.4).float(),
        "normals": normals,
        "depth": 3 * torch.rand(n, 1, s, s, generator=gen),
        "edge": (torch.rand(n, 1, s, s, generator=gen) < 0.15).float(),
    }
    return outputs, batch


def evaluator() -> MultiTaskEvaluator:
    return MultiTaskEvaluator(TASKS, {"semseg": 5}, edge_num_thresholds=19)


def take(data: dict[str, torch.Tensor], index: list[int]) -> dict[str, torch.Tensor]:
    return {k: v[index] for k, v in data.items()}


def worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        outputs, batch = dataset()
        ev = evaluator()
        if rank == 0:  # images 0, 1, 2 in two batches
            ev.update(take(outputs, [0, 1]), take(batch, [0, 1]))
            ev.update(take(outputs, [2]), take(batch, [2]))
        else:  # images 3, 4 and the padding duplicate of image 0
            mask = torch.tensor([True, True, False])
            ev.update(take(outputs, [3, 4, 0]), take(batch, [3, 4, 0]), sample_mask=mask)
        results = ev.compute()
        results["semseg/per_class"] = ev.per_class_iou("semseg")
        losses = LossMean(TASKS)  # uneven shards without padding: 3 images in 2 batches, 2 in 1
        for index in ([0, 1], [2]) if rank == 0 else ([3, 4],):
            losses.update(MultiTaskLoss(TASKS).sums(take(outputs, index), take(batch, index)))
        results.update({f"{t}/data_set_loss": v for t, v in losses.compute().items()})
        ev.update(take(outputs, [0]), take(batch, [0]))  # local state stays usable after compute
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_two_process_gloo_equals_single_process(tmp_path):
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)

    outputs, batch = dataset()
    single = evaluator()
    single.update(outputs, batch)
    expected = single.compute()
    expected["semseg/per_class"] = single.per_class_iou("semseg")
    losses = LossMean(TASKS)
    losses.update(MultiTaskLoss(TASKS).sums(outputs, batch))
    expected.update({f"{t}/data_set_loss": v for t, v in losses.compute().items()})
    assert all(math.isfinite(v.sum().item()) for v in expected.values())

    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert set(got) == set(expected)
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=1e-6, atol=1e-5, msg=f"rank {rank}, {key}")
