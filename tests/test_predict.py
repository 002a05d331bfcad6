"""`mtlora predict` writes one valid PNG panel per image, for a data split and for an image folder."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtlora.cli import run_cli
from mtlora.visualize import palette, render

CONFIG = Path(__file__).parent / "configs" / "tiny_synthetic.yaml"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit")
    cli = run_cli(
        [
            "fit",
            "--config",
            str(CONFIG),
            "--trainer.max_steps",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.default_root_dir",
            str(out),
            "--trainer.logger.init_args.save_dir",
            str(out),
        ]
    )
    return next(Path(cli.trainer.log_dir).glob("checkpoints/*.ckpt"))


def test_predict_on_data_split_writes_panels_with_ground_truth(tmp_path, checkpoint):
    out = tmp_path / "pred"
    run_cli(
        [
            "predict",
            "--config",
            str(CONFIG),
            "--ckpt_path",
            str(checkpoint),
            "--data.test_size",
            "3",
            "--trainer.logger.init_args.save_dir",
            str(out),
            "--trainer.default_root_dir",
            str(out),
        ]
    )
    panels = sorted(out.rglob("predictions/*.png"))
    assert len(panels) == 3
    for path in panels:
        assert path.read_bytes()[:8] == PNG
        with Image.open(path) as img:
            assert img.width > img.height  # input + six task columns side by side, two rows


def test_predict_on_image_folder(tmp_path, checkpoint):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.jpg", (50, 70)), ("b.png", (64, 64))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(images / name)
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "pred"
    run_cli(
        [
            "predict",
            "--config",
            str(CONFIG),
            "--ckpt_path",
            str(checkpoint),
            "--data",
            "mtlora.data.ImageFolderDataModule",
            "--data.root",
            str(images),
            "--data.img_size",
            "64",
            "--data.tasks",
            "[semseg, human_parts, sal, normals, edge, depth]",
            "--trainer.logger.init_args.save_dir",
            str(out),
            "--trainer.default_root_dir",
            str(out),
        ]
    )
    panels = sorted(p.name for p in out.rglob("predictions/*.png"))
    assert panels == ["a.png", "b.png"]


def test_render_colours_and_ignore():
    seg = np.array([[0, 1], [2, 255]])
    pic = render("semseg", seg, 21)
    assert pic.shape == (2, 2, 3) and (pic[1, 1] == 255).all()
    assert (pic[0, 1] == palette(21)[1]).all() and tuple(palette(21)[1]) == (128, 0, 0)  # VOC colour map
    normals = np.zeros((1, 2, 3), dtype=np.float32)
    normals[0, 0] = (0, 0, 1)
    normals[0, 1] = 255
    pic = render("normals", normals)
    assert tuple(pic[0, 0]) == (127, 127, 255) and tuple(pic[0, 1]) == (255, 255, 255)
    assert render("depth", torch.rand(4, 4).numpy()).shape == (4, 4, 3)
