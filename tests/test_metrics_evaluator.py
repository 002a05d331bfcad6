"""MultiTaskEvaluator: key names, per-task collections, and update() without host synchronisation."""

from __future__ import annotations

import pytest
import torch

from mtlora.metrics import MultiTaskEvaluator, build_task_metrics, headline_key

ALL_TASKS = ["semseg", "human_parts", "sal", "normals", "depth", "edge"]
EXPECTED_KEYS = {
    "semseg/mIoU",
    "semseg/pixel_acc",
    "human_parts/mIoU",
    "human_parts/pixel_acc",
    "sal/mIoU",
    "sal/maxF",
    "normals/mean",
    "normals/median",
    "normals/rmse",
    "normals/within_11.25",
    "normals/within_22.5",
    "normals/within_30",
    "depth/rmse",
    "depth/log_rmse",
    "edge/loss",
    "edge/odsF",
}


def fake_step(b: int = 2, size: int = 16, device: str = "cpu", seed: int = 0):
    """Logits and a batch in the convention of mtlora.tasks for every task."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=gen)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    outputs = {
        "semseg": randn(b, 21, size, size),
        "human_parts": randn(b, 7, size, size),
        "sal": randn(b, 1, size, size),
        "normals": randn(b, 3, size, size),
        "depth": 4 * rand(b, 1, size, size),
        "edge": randn(b, 1, size, size),
    }
    semseg = torch.randint(0, 21, (b, size, size), generator=gen)
    semseg[rand(b, size, size) < 0.1] = 255
    normals = torch.nn.functional.normalize(randn(b, 3, size, size), dim=1)
    normals[:, :, :2] = 255
    batch = {
        "image": randn(b, 3, size, size),
        "semseg": semseg,
        "human_parts": torch.randint(0, 7, (b, size, size), generator=gen),
        "sal": (rand(b, 1, size, size) < 0.3).float(),
        "normals": normals,
        "depth": torch.where(rand(b, 1, size, size) < 0.1, 255.0, 4 * rand(b, 1, size, size)),
        "edge": (rand(b, 1, size, size) < 0.1).float(),
    }
    return {k: v.to(device) for k, v in outputs.items()}, {k: v.to(device) for k, v in batch.items()}


def test_keys_and_values_are_finite_scalars():
    evaluator = MultiTaskEvaluator(ALL_TASKS, {"semseg": 21})
    outputs, batch = fake_step()
    evaluator.update(outputs, batch)
    results = evaluator.compute()
    assert set(results) == EXPECTED_KEYS
    assert all(v.ndim == 0 and torch.isfinite(v) for v in results.values())
    assert {headline_key(t) for t in ALL_TASKS} <= set(results)
    assert evaluator.per_class_iou("semseg").shape == (21,)
    assert evaluator.per_class_iou("human_parts").mean().item() == pytest.approx(
        results["human_parts/mIoU"].item()
    )
    evaluator.reset()
    assert evaluator.metrics["semseg"]["segmentation"].confmat.sum().item() == 0


def test_build_task_metrics_prefix_and_errors():
    collection = build_task_metrics("normals")
    outputs, batch = fake_step()
    collection.update(outputs["normals"], batch["normals"])
    assert set(collection.compute()) == {k for k in EXPECTED_KEYS if k.startswith("normals/")}
    with pytest.raises(ValueError, match="num_classes"):
        build_task_metrics("semseg")
    with pytest.raises(ValueError, match="unknown task"):
        build_task_metrics("flow")
    with pytest.raises(ValueError, match="segmentation task"):
        MultiTaskEvaluator(["sal"]).per_class_iou("sal")


def test_update_runs_without_reading_tensor_values_on_the_host():
    """Two views of the same property.

    * On the ``meta`` device tensors have no data: ``.item()``, ``bool()``, ``.cpu()``, boolean-mask
      indexing, ``nonzero`` and CUDA-style ``bincount`` all fail there, so an update that runs on
      meta tensors has neither host reads nor data-dependent shapes.
    * On CPU, the Python-level escape hatches are patched to fail during ``update``.
    """
    evaluator = MultiTaskEvaluator(ALL_TASKS, {"semseg": 21}).to("meta")
    outputs, batch = fake_step(device="meta")
    evaluator.update(outputs, batch, sample_mask=torch.ones(2, dtype=torch.bool, device="meta"))
    assert evaluator.metrics["normals"]["normals"].hist.device.type == "meta"

    evaluator = MultiTaskEvaluator(ALL_TASKS, {"semseg": 21})
    outputs, batch = fake_step()
    mask = torch.tensor([True, False])
    with pytest.MonkeyPatch.context() as mp:
        for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "nonzero"):
            mp.setattr(
                torch.Tensor, name, lambda *a, _n=name, **k: pytest.fail(f"Tensor.{_n} called in update")
            )
        evaluator.update(outputs, batch, sample_mask=mask)
    assert all(torch.isfinite(v) for v in evaluator.compute().values())


def test_module_dtype_casts_do_not_reach_states_or_thresholds():
    """A parent's ``.to(bfloat16)`` / ``.half()`` (Lightning "bf16-true") must not degrade sums or grids."""
    outputs, batch = fake_step(seed=3)
    reference = MultiTaskEvaluator(ALL_TASKS, {"semseg": 21})
    reference.update(outputs, batch)
    for cast in (lambda m: m.to(torch.bfloat16), lambda m: m.half()):
        evaluator = cast(MultiTaskEvaluator(ALL_TASKS, {"semseg": 21}))
        sal = evaluator.metrics["sal"]["binary"]
        assert sal.jaccard_sum.dtype == torch.float64 and sal.miou_thr.dtype == torch.float32
        assert torch.equal(sal.miou_thr, reference.metrics["sal"]["binary"].miou_thr)
        evaluator.update(outputs, batch)
        assert evaluator.compute() == reference.compute()
