"""Files and class paths written before the package layout change still load."""

from pathlib import Path

import torch
from safetensors.torch import load_file

from mtlora.io.adapters import load_adapters
from mtlora.training.module import MultiTaskModule

OLD = Path(__file__).parent / "fixtures" / "pre_layout"


def test_checkpoint_written_before_the_move_loads_and_its_adapter_file_matches():
    module = MultiTaskModule.load_from_checkpoint(OLD / "tiny.ckpt", weights_only=True)
    state = torch.load(OLD / "tiny.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    for key, value in module.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert module.model.tasks == ["semseg", "depth"]

    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    report = load_adapters(module.model, OLD / "tiny_adapters.safetensors")  # strict, base hash checked
    assert report.loaded and not report.missing and not report.unexpected
    stored = load_file(OLD / "tiny_adapters.safetensors")
    assert set(stored) <= set(before)
    for key, value in module.model.state_dict().items():  # the file holds the checkpoint's own values
        assert torch.equal(value, before[key]), key


def test_old_callback_class_path_in_a_config_still_resolves():
    from jsonargparse import ArgumentParser
    from lightning.pytorch.callbacks import Callback

    from mtlora.training.resume import ResumeCheckpoint

    parser = ArgumentParser()
    parser.add_argument("--callback", type=Callback)
    config = parser.parse_args(["--callback", '{"class_path": "mtlora.resume.ResumeCheckpoint"}'])
    assert isinstance(parser.instantiate_classes(config).callback, ResumeCheckpoint)


def test_public_api_resolves_lazily_without_torch():
    import subprocess
    import sys

    code = (
        "import sys, mtlora\n"
        "before = 'torch' in sys.modules\n"
        "names = {n: getattr(mtlora, n).__module__ for n in mtlora.__all__}\n"
        "print(before, sorted(set(names.values())))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, modules = out.split(" ", 1)
    assert before == "False"  # `import mtlora` alone stays cheap
    assert "mtlora.training.module" in modules and "mtlora.io.adapters" in modules
