"""``mtlora export``: merged safetensors + config round trip, and a torch.export program that runs
in a fresh interpreter where the library cannot be imported."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from mtlora.cli import run_cli
from mtlora.io.export import export_model, load_exported
from mtlora.models.model import MultiTaskModel
from mtlora.models.plans import AdapterConfig

from conftest import PASCAL_CHANNELS, randomize_lora, tiny_encoder

CONFIGS = Path(__file__).parent / "configs"


# Runs in a separate interpreter: the library is made unimportable before torch is imported, and
# the program must load and run anyway.  Paths come as argv: program, inputs, outputs.
RUN_WITHOUT_MTLORA = textwrap.dedent("""
    import sys
    sys.modules["mtlora"] = None  # any 'import mtlora...' now raises ImportError (editable installs too)
    try:
        import mtlora  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("mtlora is importable")
    import torch
    program = torch.export.load(sys.argv[1]).module()
    outputs = program(torch.load(sys.argv[2]))
    torch.save({k: v.detach() for k, v in outputs.items()}, sys.argv[3])
    assert not [m for m in sys.modules if m.startswith("mtlora.")], "the program imported mtlora"
""")


def run_program_without_library(tmp_path: Path, program: Path, x: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.save(x, tmp_path / "inputs.pt")
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            RUN_WITHOUT_MTLORA,
            str(program),
            str(tmp_path / "inputs.pt"),
            str(tmp_path / "outputs.pt"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp_path / "outputs.pt")


def test_export_cli_round_trip_without_library(tmp_path):
    fit_dir = tmp_path / "fit"
    tasks = ["--data.init_args.tasks", "[semseg, normals]"]  # two heads keep the export trace short
    cli = run_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / "tiny_synthetic.yaml"),
            *tasks,
            "--trainer.max_steps",
            "2",
            "--trainer.limit_val_batches",
            "0",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.default_root_dir",
            str(fit_dir),
            "--trainer.logger.init_args.save_dir",
            str(fit_dir),
        ]
    )
    ckpt = next(Path(cli.trainer.log_dir).glob("checkpoints/*.ckpt"))
    out = tmp_path / "export"
    run_cli(
        [
            "export",
            "--config",
            str(CONFIGS / "tiny_synthetic.yaml"),
            *tasks,
            "--ckpt_path",
            str(ckpt),
            "--out",
            str(out),
        ]
    )
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "model.pt2"}
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "mtlora-merged" and config["tasks"] == list(cli.model.tasks)
    assert config["merged"]["shared"] and config["merged"]["low_rank_paths"]

    trained = cli.model.model.eval()
    x = torch.randn(3, 3, 64, 64)  # another batch size than the export example: the batch dim is dynamic
    with torch.no_grad():
        ref = trained(x)
        rebuilt = load_exported(out)(x)
    outputs = run_program_without_library(tmp_path, out / "model.pt2", x)
    assert set(outputs) == set(ref)
    for task in ref:
        torch.testing.assert_close(rebuilt[task], ref[task], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(outputs[task], ref[task], atol=1e-5, rtol=1e-5)


def test_export_progressive_merges_streams_and_leaves_model_untouched(tmp_path):
    torch.manual_seed(0)
    adapter = AdapterConfig(
        shared_rank=4,
        task_rank=2,
        method="progressive",
        groups=["shared", "shared", [["semseg", "human_parts"], ["sal", "normals"]], "tasks"],
    )
    model = MultiTaskModel(PASCAL_CHANNELS, tiny_encoder(), adapter).eval()
    randomize_lora(model, std=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = export_model(model, tmp_path, program=False)
    assert not (tmp_path / "model.pt2").exists() and config["files"]["program"] is None
    assert "backbone.layers.3.blocks.1.mlp.fc1" in config["merged"]["stream_paths"]
    for key, value in model.state_dict().items():  # export merged a copy
        assert torch.equal(value, before[key]), key
    loaded = load_exported(tmp_path)
    assert loaded.backbone.layers[3].blocks[1].mlp.fc1.merged_paths_weight.shape[0] == 4
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref, out = model(x), loaded(x)
    for task in PASCAL_CHANNELS:
        torch.testing.assert_close(out[task], ref[task], atol=1e-5, rtol=1e-5)
