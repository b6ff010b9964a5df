"""Every notebook in experiments/notebooks runs top to bottom with its small defaults, and
the checks it ends with hold (each ends in assertions on what it showed).

The notebooks are stored as jupytext percent scripts (`# %%` cells, no outputs: reviewable
diffs); Jupyter opens them as notebooks when jupytext is installed, and here they run in a
fresh IPython kernel (nbclient), in a temporary folder, where their run folders go.
"""

from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "experiments" / "notebooks").glob(
    "[0-9][0-9]_*.py"))


def test_the_four_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == ["01_quickstart", "02_gradients", "03_ablation",
                                           "04_inside_a_cell"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_the_notebook_runs_and_its_checks_hold(path, tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # the kernel inherits the environment
    notebook = jupytext.read(path)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    last = [c for c in notebook.cells if c.cell_type == "code"][-1]
    said = "".join(o.get("text", "") for o in last.outputs if o.get("output_type") == "stream")
    assert "assert" in last.source and "all checks passed" in said, said
    shown = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs
             if o.get("output_type") in ("display_data", "execute_result")]
    assert any("image/png" in o["data"] for o in shown), "no figure was shown inline"
