"""Task similarity: grouping maths, an identical-task pair groups together, CLI writes a usable plan."""

from pathlib import Path

import pytest
import torch
import yaml

from mtlora.cli import run_cli
from mtlora.models.model import MultiTaskModel
from mtlora.models.plans import AdapterConfig
from mtlora.tools.similarity import constrained_average_linkage, group_tasks, task_gradient_similarity

from conftest import tiny_encoder

CONFIGS = Path(__file__).parent / "configs"


def test_constrained_average_linkage_respects_parents():
    sim = torch.tensor(
        [[1.0, 0.9, 0.1, 0.2], [0.9, 1.0, 0.0, 0.1], [0.1, 0.0, 1.0, 0.95], [0.2, 0.1, 0.95, 1.0]]
    )
    assert constrained_average_linkage(sim, 2) == [[0, 1], [2, 3]]
    # a parent partition that separates 2 and 3 forbids merging them
    assert constrained_average_linkage(sim, 2, parents=[[0, 1, 2], [3]]) == [[0, 1, 2], [3]]
    assert constrained_average_linkage(sim, 1) == [[0, 1, 2, 3]]


def test_identical_tasks_group_and_unrelated_task_stays_apart():
    torch.manual_seed(0)
    channels = {"semseg": 7, "human_parts": 7, "normals": 3}
    model = MultiTaskModel(channels, tiny_encoder(), AdapterConfig(shared_rank=4, task_rank=2))
    # human_parts is built identical to semseg: same head weights, same targets, same loss
    model.decoder.fusion["human_parts"].load_state_dict(model.decoder.fusion["semseg"].state_dict())
    model.decoder.heads["human_parts"].load_state_dict(model.decoder.heads["semseg"].state_dict())
    g = torch.Generator().manual_seed(1)

    def batches():
        while True:
            labels = torch.randint(0, 7, (2, 64, 64), generator=g)
            normals = torch.nn.functional.normalize(torch.randn(2, 3, 64, 64, generator=g), dim=1)
            yield {
                "image": torch.randn(2, 3, 64, 64, generator=g),
                "semseg": labels,
                "human_parts": labels.clone(),
                "normals": normals,
            }

    result = task_gradient_similarity(model, batches(), num_batches=2)
    for m in result.matrices:
        assert m.shape == (3, 3)
        assert m[0, 1].item() == pytest.approx(1.0, abs=1e-4)
        assert m[0, 2].item() < 0.99
    assert group_tasks(result, [1, 1, 2, 3]) == [
        "shared",
        "shared",
        [["semseg", "human_parts"], ["normals"]],
        "tasks",
    ]


def test_similarity_cli_writes_plan_heatmap_and_plan_trains(tmp_path, capsys):
    out = tmp_path / "sim"
    run_cli(
        [
            "similarity",
            "--config",
            str(CONFIGS / "tiny_synthetic.yaml"),
            "--batches",
            "2",
            "--out_dir",
            str(out),
            "--trainer.logger",
            "false",
        ]
    )
    plan = yaml.safe_load((out / "plan.yaml").read_text())
    groups = plan["model"]["adapter"]["groups"]
    assert len(groups) == 4 and groups[0] == "shared" and groups[-1] == "tasks"
    assert (out / "similarity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "similarity: batch 1/2" in printed and "similarity: batch 2/2" in printed  # progress
    cli = run_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / "tiny_synthetic.yaml"),
            "-c",
            str(out / "plan.yaml"),
            "--trainer.max_steps",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.logger",
            "false",
        ]
    )
    assert cli.model.model.adapter_config.method == "progressive"
    assert cli.model.model.backbone.layers[3].blocks[0].kind == "streams"


def test_similarity_uses_the_weights_fit_starts_from(tmp_path, monkeypatch):
    """Gradients are taken on ``encoder.pretrained`` (+ ``init_weights``), not on a random encoder."""
    import safetensors.torch
    from test_checkpoints_swin import tiny_timm

    import mtlora.tools.similarity

    weights = tmp_path / "swin_tiny_timm.safetensors"
    safetensors.torch.save_file(tiny_timm(seed=7, num_classes=0).state_dict(), weights)
    seen = {}
    compute = mtlora.tools.similarity.task_gradient_similarity

    def recording(model, *args, **kwargs):
        seen.update({k: v.detach().clone() for k, v in model.backbone.state_dict().items()})
        return compute(model, *args, **kwargs)

    monkeypatch.setattr(mtlora.tools.similarity, "task_gradient_similarity", recording)
    args = ["similarity", "--config", str(CONFIGS / "tiny_synthetic.yaml"), "--batches", "1"]
    args += ["--out_dir", str(tmp_path / "sim"), "--trainer.logger", "false"]
    run_cli([*args, "--model.encoder.pretrained", str(weights)])
    expected = tiny_timm(seed=7, num_classes=0)
    assert torch.equal(seen["patch_embed.proj.weight"], expected.patch_embed.proj.weight)
    assert torch.equal(
        seen["layers.1.blocks.0.attn.qkv.linear.weight"], expected.layers[1].blocks[0].attn.qkv.weight
    )
