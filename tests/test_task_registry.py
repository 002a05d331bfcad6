"""A task added with register_task alone trains, evaluates, predicts and augments like a built-in one."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtlora.cli import run_cli
from mtlora.data import SyntheticDataModule
from mtlora.data.device_augment import DeviceAugment, DevicePrep
from mtlora.data.transforms import MultiTaskTransform
from mtlora.losses import MultiTaskLoss, balanced_bce_loss
from mtlora.metrics import headline_key, headline_metric
from mtlora.metrics.delta_m import delta_m_terms
from mtlora.tasks import TaskSpec, register_task, task_info, unregister_task
from mtlora.tools.report.render import markdown
from mtlora.tools.report.runs import RunRow
from mtlora.weighting import UncertaintyWeighting

CONFIG = Path(__file__).parent / "configs" / "tiny_synthetic.yaml"


def person_mask(scene):
    """Binary person mask of a synthetic scene: pixels carrying a human part (1..6)."""
    parts = scene["human_parts"]
    return ((parts >= 1) & (parts <= 6)).astype(np.uint8)


@pytest.fixture
def registered():
    """Register toy tasks for one test and remove them afterwards (the registry is global)."""
    added: list[str] = []

    def add(spec: TaskSpec) -> TaskSpec:
        register_task(spec)
        added.append(spec.name)
        return spec

    yield add
    for name in added:
        unregister_task(name)


def test_register_task_checks_its_input(registered):
    with pytest.raises(ValueError, match="already registered"):
        register_task(TaskSpec("sal", "binary", 1.0, 1, True))
    with pytest.raises(ValueError, match="identifier"):
        register_task(TaskSpec("my/task", "binary", 1.0, 1, True))
    with pytest.raises(ValueError, match="kind must be one of"):
        register_task(TaskSpec("flow", "optical_flow", 1.0, 2, False))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        unregister_task("nope")
    registered(TaskSpec("person", "binary", 3.0, 1, True, synthetic=person_mask))
    assert task_info("person").headline_metric == "mIoU" and headline_key("person") == "person/mIoU"
    assert headline_metric("edge") == ("odsF", True)  # a task's own headline beats its kind's
    assert MultiTaskLoss(["sal", "person"]).weights == {"sal": 5.0, "person": 3.0}
    registered(TaskSpec("height", "depth", 2.0, 1, False))
    factors = UncertaintyWeighting(["person", "height"], {"person": 3.0, "height": 2.0}).factor
    assert factors.tolist() == [1.0, 0.5]  # regression kinds get Kendall's 1/2


def test_delta_m_takes_the_direction_a_task_declares(registered):
    registered(TaskSpec("count", "depth", 1.0, 1, False, headline="abs_err"))
    registered(TaskSpec("recall", "binary", 1.0, 1, True, headline="r50"))
    results = {"count/abs_err": 2.0, "recall/r50": 60.0}
    terms = delta_m_terms(results, {"count/abs_err": 1.0, "recall/r50": 50.0})
    assert terms == [("count/abs_err", 1.0, False), ("recall/r50", 50.0, True)]
    with pytest.raises(
        ValueError, match="direction of 'sal/odd' unknown"
    ):  # undeclared metric names still fail
        delta_m_terms({"sal/odd": 1.0}, {"sal/odd": 1.0})


def test_report_columns_follow_the_registry_and_keep_unknown_tasks(registered):
    registered(TaskSpec("count", "depth", 1.0, 1, False, headline="abs_err"))
    row = RunRow("r", "MTLoRA", ["semseg", "count"], {"ghost/x": 1.0, "count/abs_err": 2.0, "semseg/mIoU": 3.0},
                 None, None, 0, "val/loss", "runs/r")  # fmt: skip
    header = next(line for line in markdown([row], [], "t").splitlines() if line.startswith("| Method"))
    assert header.index("semseg mIoU ↑") < header.index("count abs_err ↓") < header.index("ghost x")


def test_toy_task_gets_the_kind_defaults_of_loss_and_augmentation(registered):
    # Copies of built-in tasks under new names: every per-kind rule must treat them identically,
    # including the in-plane rotation of normals and the zoom division of depth.
    for name, kind, channels, source in [
        ("sal2", "binary", 1, "sal"),
        ("normals2", "normals", 3, "normals"),
        ("depth2", "depth", 1, "depth"),
        ("parts2", "segmentation", 7, "human_parts"),
    ]:
        registered(
            TaskSpec(
                name,
                kind,
                1.0,
                channels,
                True,
                ignore_without_foreground=source == "human_parts",
                synthetic=lambda scene, source=source: scene[source].copy(),
            )
        )
    tasks = ["sal", "sal2", "normals", "normals2", "depth", "depth2", "human_parts", "parts2"]
    dm = SyntheticDataModule(
        tasks=tasks, img_size=48, num_classes=4
    )  # no person class 15: parts often ignored
    sample = dm.example("train", 3)
    cpu = MultiTaskTransform(tasks, 40, augment=True, seed=3)(sample)
    prep = DevicePrep(tasks, seed=3)
    device = DeviceAugment(tasks, 40)(prep.collate([prep(sample)]))
    for out in (cpu, {k: v[0] for k, v in device.items() if k != "image"}):
        for new, old in [
            ("sal2", "sal"),
            ("normals2", "normals"),
            ("depth2", "depth"),
            ("parts2", "human_parts"),
        ]:
            assert out[new].dtype == out[old].dtype
            assert torch.equal(out[new], out[old]), new
    assert not torch.equal(
        cpu["normals"], MultiTaskTransform(["normals"], 40)(sample)["normals"]
    )  # augmented
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.7).float()
    losses = MultiTaskLoss(["sal2"])({"sal2": logits}, {"sal2": target})
    assert torch.equal(losses["sal2"], balanced_bce_loss(logits, target))  # batch-adaptive weight


def test_toy_task_trains_validates_and_predicts_through_the_cli(tmp_path, registered):
    registered(TaskSpec("person", "binary", 3.0, 1, True, synthetic=person_mask))
    dm = SyntheticDataModule(tasks=["semseg", "person"], img_size=32)
    assert "person" in dm.available_tasks and "person" not in SyntheticDataModule().tasks
    scene = dm.example("val", 1)
    assert np.array_equal(scene["person"], person_mask(scene))

    common = ["--config", str(CONFIG), "--data.init_args.tasks", "[semseg, person]"]
    common += ["--data.init_args.train_size", "8", "--data.init_args.val_size", "4"]
    common += ["--trainer.default_root_dir", str(tmp_path)]
    fit = run_cli(
        [
            "fit",
            *common,
            "--trainer.max_steps",
            "2",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "f"),
        ]
    )
    assert fit.model.tasks == ["semseg", "person"]
    with torch.no_grad():
        assert fit.model.eval()(torch.randn(1, 3, 64, 64))["person"].shape == (1, 1, 64, 64)
    ckpt = next(Path(fit.trainer.log_dir).glob("checkpoints/*.ckpt"))

    val = run_cli(
        [
            "validate",
            *common,
            "--ckpt_path",
            str(ckpt),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "v"),
        ]
    )
    metrics = json.loads((Path(val.trainer.log_dir) / "val_results.json").read_text())["metrics"]
    assert 0 <= metrics["val/person/mIoU"] <= 100 and 0 <= metrics["val/person/maxF"] <= 100
    assert metrics["val/person/loss"] > 0 and np.isfinite(metrics["val/person/loss"])

    out = tmp_path / "pred"
    run_cli(
        ["predict", *common, "--ckpt_path", str(ckpt), "--data.init_args.test_size", "2"]
        + ["--trainer.logger.init_args.save_dir", str(out), "--trainer.default_root_dir", str(out)]
    )
    panels = sorted(out.rglob("predictions/*.png"))
    probabilities = sorted(out.rglob("predictions/person/*.npy"))
    assert len(panels) == 2 and len(probabilities) == 2
    with Image.open(panels[0]) as panel:  # input + semseg + person columns, prediction over ground truth
        assert panel.width > panel.height
    for path in probabilities:
        prob = np.load(path)
        assert prob.shape == (64, 64) and 0 <= prob.min() <= prob.max() <= 1
