"""End-to-end CLI runs in-process: fit (MTLoRA, MTLoRA+), validate/test JSON, summary, errors."""

import json
from pathlib import Path

import pytest
import torch

from mtlora.cli import run_cli

from conftest import summary_json

CONFIGS = Path(__file__).parent / "configs"
REPO_CONFIGS = Path(__file__).parents[1] / "configs"


def fit(tmp_path, *extra):
    args = [
        "fit",
        "--config",
        str(CONFIGS / "tiny_synthetic.yaml"),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
        *extra,
    ]
    return run_cli(args)


@pytest.mark.parametrize("patch_merging", [False, True])
def test_fit_mtlora_and_plus_writes_results_and_checkpoint(tmp_path, capsys, patch_merging):
    cli = fit(tmp_path, "--model.adapter.patch_merging", str(patch_merging).lower())
    model = cli.model.model
    assert model.adapter_config.patch_merging is patch_merging
    assert list(model.tasks) == [
        "semseg",
        "human_parts",
        "sal",
        "normals",
        "edge",
        "depth",
    ]  # linked from data
    log_dir = Path(cli.trainer.log_dir)
    results = json.loads((log_dir / "val_results.json").read_text())["metrics"]
    for key in ("val/semseg/mIoU", "val/normals/mean", "val/sal/mIoU", "val/depth/rmse", "val/edge/odsF"):
        assert key in results
    assert all(v == v for v in results.values() if not isinstance(v, str))  # no NaN
    assert "val results" in capsys.readouterr().out
    assert list(log_dir.glob("checkpoints/*.ckpt"))
    # only trainable parameters are in the optimizer
    opt_params = {id(p) for g in cli.trainer.optimizers[0].param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in cli.model.parameters() if p.requires_grad}
    frozen = cli.model.model.backbone.layers[0].blocks[0].attn.qkv.linear.weight
    assert not frozen.requires_grad


def test_validate_and_test_write_json(tmp_path):
    cli = fit(tmp_path)
    ckpt = next(Path(cli.trainer.log_dir).glob("checkpoints/*.ckpt"))
    for stage in ("validate", "test"):
        out = tmp_path / stage
        cli2 = run_cli(
            [
                stage,
                "--config",
                str(CONFIGS / "tiny_synthetic.yaml"),
                "--ckpt_path",
                str(ckpt),
                "--trainer.logger.init_args.save_dir",
                str(out),
                "--trainer.default_root_dir",
                str(out),
            ]
        )
        name = "val" if stage == "validate" else "test"
        data = json.loads((Path(cli2.trainer.log_dir) / f"{name}_results.json").read_text())
        assert data["ckpt_path"] == str(ckpt)
        assert f"{name}/semseg/mIoU" in data["metrics"]


def test_checkpoint_hparams_load_weights_only(tmp_path):
    from mtlora.training.module import MultiTaskModule

    cli = fit(tmp_path)
    ckpt = next(Path(cli.trainer.log_dir).glob("checkpoints/*.ckpt"))
    torch.load(ckpt, weights_only=True)  # plain types only: safe to load
    loaded = MultiTaskModule.load_from_checkpoint(ckpt, weights_only=True)
    assert loaded.model.adapter_config.shared_rank == 4
    x = torch.randn(1, 3, 64, 64)
    cli.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x)["semseg"], cli.model(x)["semseg"])


def test_summary_prints_official_counts(capsys, tmp_path):
    out = tmp_path / "summary.json"
    run_cli(["summary", "--config", str(REPO_CONFIGS / "swin_tiny_r16.yaml"), "--json_out", str(out)])
    text = capsys.readouterr().out
    assert "4,953,146" in text and "1,946,624" in text and "30,871,418" in text
    result = json.loads(out.read_text())
    assert result["parameters"]["trainable"] == 4_953_146
    assert result["gmacs"]["total"] == pytest.approx(
        26.6, abs=0.1
    )  # official model: 26.6 GMACs (FlopCounter, 448)
    assert set(result["gmacs"]) >= {"encoder", "decoder/semseg", "decoder/normals", "total"}


def test_summary_gmacs_on_fake_tensors_equal_a_real_forward():
    from torch.utils.flop_counter import FlopCounterMode

    from mtlora.models.model import MultiTaskModel
    from mtlora.tools.summary import gmacs

    from conftest import PASCAL_CHANNELS, tiny_encoder

    model = MultiTaskModel(PASCAL_CHANNELS, tiny_encoder())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    counted = gmacs(model, 64)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, 64, 64))
    real = {k.split(".", 1)[-1]: sum(v.values()) / 2e9 for k, v in counter.get_flop_counts().items()}
    assert counted["total"] == real["Global"] > 0
    assert counted["encoder"] == real["backbone"]
    for task in PASCAL_CHANNELS:
        assert counted[f"decoder/{task}"] == real[f"decoder.fusion.{task}"] + real.get(
            f"decoder.heads.{task}", 0
        )
    for key, value in model.state_dict().items():  # weights stay real and unchanged
        assert type(value) is torch.Tensor and torch.equal(value, before[key]), key


@pytest.mark.parametrize(
    "name,trainable",
    [
        ("swin_tiny_r32", 6_083_642),
        ("swin_tiny_r64", 8_344_634),
        ("swin_tiny_mtlora_plus_r4", 2_573_114),
        ("swin_tiny_mtlora_plus_r8", 3_148_346),
        ("swin_tiny_mtlora_plus_r16", 4_298_810),
    ],
)
def test_shipped_configs_counts(name, trainable, tmp_path):
    assert summary_json(REPO_CONFIGS / f"{name}.yaml", tmp_path)["parameters"]["trainable"] == trainable


def test_paper_config_without_data_stops_with_clear_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception) as err:
        run_cli(
            [
                "fit",
                "--config",
                str(REPO_CONFIGS / "swin_tiny_r16.yaml"),
                "--model.encoder.pretrained",
                "null",
                "--data.init_args.root",
                str(tmp_path / "missing" / "PASCAL_MT"),
            ]
        )
    msg = str(err.value)
    assert "PASCAL_MT" in msg and "configs/demo.yaml" in msg and "missing" in msg


def test_config_typo_is_reported(capsys):
    with pytest.raises(SystemExit):
        run_cli(["fit", "--config", str(CONFIGS / "tiny_synthetic.yaml"), "--model.adapter.shared_rnak", "8"])
    assert "shared_rnak" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["--help"], ["report", "--help"], ["data", "check", "--help"]])
def test_light_commands_start_without_lightning_or_torch(command):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from mtlora.cli import run_cli\n"
        "try:\n"
        f"    run_cli({command!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('HEAVY', sorted(m for m in ('lightning', 'torch', 'timm') if m in sys.modules))\n"
    )
    root = Path(__file__).parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env={"PYTHONPATH": str(root)}
    )
    assert out.returncode == 0, out.stderr
    assert "usage: mtlora" in out.stdout
    assert "HEAVY []" in out.stdout


def test_top_level_help_lists_every_command(capsys):
    from mtlora.cli import COMMANDS, LIGHT_COMMANDS
    from mtlora.training.lightning_cli import MTLoRACLI

    run_cli(["--help"])
    text = capsys.readouterr().out
    listed = {line.split()[0] for line in text.splitlines() if line.startswith("  ")}
    assert listed == set(COMMANDS) == {*MTLoRACLI.subcommands(), *LIGHT_COMMANDS}
    assert {"report", "data", "sweep", "edge_eval"} <= set(LIGHT_COMMANDS)


def test_commands_say_where_things_went_and_validate_prints_metrics_once(tmp_path, capsys):
    import csv

    cli = fit(tmp_path, "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "1")
    assert cli.trainer.num_val_batches == [1]  # `1` means one batch, not 100 % (2 batches here)
    out = capsys.readouterr().out
    run = Path(cli.trainer.log_dir)
    results = run / "val_results.json"
    ckpt = Path(cli.trainer.checkpoint_callback.best_model_path)
    assert ckpt.is_file()
    assert (
        f"run folder:      {run}" in out
        and f"checkpoint:      {ckpt}" in out
        and f"results:         {results}" in out
    )
    # the results file names the epoch whose validation it holds, as metrics.csv does
    with open(run / "metrics.csv") as f:
        val_epochs = [int(r["epoch"]) for r in csv.DictReader(f) if r.get("val/loss")]
    assert json.loads(results.read_text())["epoch"] == val_epochs[-1] == 1

    common = ["--config", str(CONFIGS / "tiny_synthetic.yaml"), "--ckpt_path", str(ckpt)]
    cli = run_cli(["validate", *common, "--trainer.logger.init_args.save_dir", str(tmp_path / "v")])
    out = capsys.readouterr().out
    assert out.count("val results") == 1 and "Validate metric" not in out  # one table, not Lightning's too
    assert f"checkpoint:      {ckpt}" in out
    assert f"results:         {Path(cli.trainer.log_dir) / 'val_results.json'}" in out

    cli = run_cli(
        [
            "predict",
            *common,
            "--trainer.limit_predict_batches",
            "1",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "p"),
        ]
    )
    out = capsys.readouterr().out
    predictions = Path(cli.trainer.log_dir) / "predictions"
    assert (
        f"predictions:     {predictions}" in out and len(list(predictions.glob("*.png"))) == 4
    )  # one batch of 4
