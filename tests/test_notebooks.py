"""The notebooks run top to bottom on CPU (synthetic data), show their figures inline, and are
stored without outputs."""

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
# a cell that draws something: pyplot calls or the library's picture functions
PLOTTING = re.compile(r"\bplt\.\w|\bprediction_panel\(|\bplot_heatmaps\(|\.imshow\(|\.plot\(")


def test_notebooks_exist():
    assert {p.name for p in NOTEBOOKS} >= {
        "quickstart.ipynb",
        "inspect_adapters.ipynb",
        "compare_baselines.ipynb",
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_outputs_stripped(path):
    book = json.loads(path.read_text())
    for cell in book["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, (
                f"{path.name}: outputs not stripped"
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path, monkeypatch):
    # the kernel keeps Jupyter's own inline backend (a forced MPLBACKEND would hide a library that
    # switches backends), so every plotting cell must come back with a PNG
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    book = nbformat.read(path, as_version=4)
    NotebookClient(
        book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    plotting = [c for c in book.cells if c.cell_type == "code" and PLOTTING.search(c.source)]
    assert plotting, f"{path.name}: no plotting cell found"
    blank = [
        c.source.splitlines()[0]
        for c in plotting
        if not any("image/png" in o.get("data", {}) for o in c.outputs)
    ]
    assert not blank, f"{path.name}: plotting cells without an inline image: {blank}"
