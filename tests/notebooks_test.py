"""The Colab notebooks run top to bottom on CPU with small settings and draw their plots.

Each notebook runs in a Jupyter kernel started from this interpreter (`sys.executable`), with
notebooks/ as the working directory, TRANSFORMER_NOTEBOOK_SMALL=1, and as many emulated CPU
devices as it is meant to show: one (a CPU runtime, or a Colab TPU, which is a single v5e chip)
for the training walk-throughs; eight (an 8-chip TPU host) for research_api's sharded step,
whose cells (tagged "sharding") also run on one device. Cells tagged "plot" must display a PNG.
The setup cell's install decisions are tested without a kernel in colab_setup_test.py.
"""

import json
import os
import pathlib
import re
import sys
import time

import nbclient
import nbformat
import pytest
from nbclient import exceptions as nbclient_exceptions
from jupyter_client import kernelspec
from jupyter_client import manager

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
# Notebook -> (the fewest "plot" cells it must have, so that a lost tag cannot hide a plot;
# the number of CPU devices its kernel sees).
NOTEBOOKS = {
    "quickstart.ipynb": (2, 1),
    "attention_explained.ipynb": (11, 1),
    "research_api.ipynb": (2, 8),
}
# Extra runs of only the setup cells and the cells with a tag, on another device count:
# (notebook, tag, number of CPU devices). The 1-device mesh is what a Colab runtime has.
PARTIAL_RUNS = [("research_api.ipynb", "sharding", 1)]
# What the sharding cells print about the mesh they got, by device count.
MESH_LINES = {8: "8 devices (cpu): mesh data=2, fsdp=2, tensor=2",
              1: "1 device (cpu; a Colab TPU v5e-1 is one chip): mesh data=1, fsdp=1, tensor=1"}
CELL_TIMEOUT_S = 300
KERNEL_NAME = "transformer-notebook-test"


def _read(name: str) -> nbformat.NotebookNode:
  return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def _plot_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
  return [c for c in nb.cells if c.cell_type == "code" and "plot" in c.metadata.get("tags", [])]


def _images(cell: nbformat.NotebookNode) -> int:
  return sum("image/png" in out.get("data", {}) for out in cell.outputs)


def _errors(nb: nbformat.NotebookNode) -> list[str]:
  return [f"{out.ename}: {out.evalue}" for c in nb.cells if c.cell_type == "code"
          for out in c.outputs if out.output_type == "error"]


@pytest.fixture(scope="module")
def kernel_spec_manager(tmp_path_factory) -> kernelspec.KernelSpecManager:
  """A kernel spec that starts this very interpreter (the CI venv's python, not a PATH lookup)."""
  kernels = tmp_path_factory.mktemp("kernels")
  spec_dir = kernels / KERNEL_NAME
  spec_dir.mkdir()
  spec = {
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": f"Python ({sys.executable})",
      "language": "python",
  }
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  return kernelspec.KernelSpecManager(kernel_dirs=[str(kernels)], ensure_native_kernel=False)


def test_every_notebook_is_tested():
  assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_committed_without_outputs(name):
  nb = _read(name)
  nbformat.validate(nb)
  dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
           and (c.outputs or c.execution_count is not None)]
  assert not dirty, f"{name}: cells {dirty} have outputs; clear them before committing"
  assert len(_plot_cells(nb)) >= NOTEBOOKS[name][0], f"{name}: plot cells lost their 'plot' tag"


def _run(name: str, num_devices: int, tag: str | None, kernel_spec_manager, tmp_path,
         monkeypatch) -> nbformat.NotebookNode:
  """Executes the notebook (with `tag`: its first two code cells and those tagged) and checks
  that it ran in this interpreter, without errors, reinstalling nothing, on `num_devices`."""
  xla_flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                     os.environ.get("XLA_FLAGS", ""))
  monkeypatch.setenv("XLA_FLAGS",
                     f"{xla_flags} --xla_force_host_platform_device_count={num_devices}".strip())
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("TRANSFORMER_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("TMPDIR", str(tmp_path))  # Run directories the notebooks create.
  monkeypatch.delenv("MPLBACKEND", raising=False)  # Keep the inline backend (PNG outputs).
  nb = _read(name)
  if tag is not None:
    code = [c for c in nb.cells if c.cell_type == "code"]
    nb.cells = code[:2] + [c for c in code[2:] if tag in c.metadata.get("tags", [])]
  # Cells added here only: which interpreter runs the kernel; at the end, the CPU time it used
  # and whether the setup cell decided to pip-install (it must not: the package is installed).
  nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print(sys.executable, end='')"))
  nb.cells.append(nbformat.v4.new_code_cell(
      "import json, resource; usage = resource.getrusage(resource.RUSAGE_SELF); "
      "print(json.dumps({'cpu': usage.ru_utime + usage.ru_stime, "
      "'needs_install': needs_install}), end='')"))
  km = manager.KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=kernel_spec_manager)
  client = nbclient.NotebookClient(
      nb, km=km, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
  )
  start = time.perf_counter()
  try:
    client.execute()
  except nbclient_exceptions.CellExecutionError as e:
    pytest.fail(f"{name} failed after {time.perf_counter() - start:.0f} s:\n{e}")
  finally:
    nbformat.write(nb, tmp_path / name)  # The executed copy, to look at after a failure.
  report = json.loads(nb.cells[-1].outputs[0].text)
  print(f"{name} ({num_devices} device{'s' * (num_devices > 1)}, cells {tag or 'all'}): "
        f"{time.perf_counter() - start:.1f} s wall, kernel CPU {report['cpu']:.1f} s")
  assert not _errors(nb)
  assert report["needs_install"] is False, "the setup cell reinstalled an installed package"
  probe, setup = [c for c in nb.cells if c.cell_type == "code"][:2]
  assert probe.outputs[0].text == sys.executable
  setup_output = _text(setup)
  assert f"CpuDevice(id={num_devices - 1})]" in setup_output, setup_output
  assert "nothing to install" in setup_output, setup_output
  return nb


def _text(cell: nbformat.NotebookNode) -> str:
  """The printed output of a cell (nothing for a markdown cell)."""
  return "".join(out.get("text", "") for out in cell.get("outputs", []))


def _check_mesh_lines(nb: nbformat.NotebookNode, num_devices: int) -> None:
  """The sharding cells say how many devices they got and which mesh they built."""
  sharding_cells = [c for c in nb.cells if "sharding" in c.metadata.get("tags", [])]
  assert sharding_cells, "the sharding cells lost their 'sharding' tag"
  assert MESH_LINES[num_devices] in _text(sharding_cells[0]), _text(sharding_cells[0])


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_and_plots(name, kernel_spec_manager, tmp_path, monkeypatch):
  num_devices = NOTEBOOKS[name][1]
  nb = _run(name, num_devices, None, kernel_spec_manager, tmp_path, monkeypatch)
  missing = [i for i, c in enumerate(nb.cells)
             if "plot" in c.metadata.get("tags", []) and _images(c) == 0]
  assert not missing, f"{name}: plot cells {missing} displayed no PNG image"
  if name == "research_api.ipynb":
    _check_mesh_lines(nb, num_devices)
  if name == "quickstart.ipynb":  # A fixed run directory (a rerun resumes), under TMPDIR here.
    expected = f"run directory: {tmp_path}/transformer-notebooks/quickstart-"
    assert any(expected in _text(c) for c in nb.cells), expected


@pytest.mark.parametrize("name, tag, num_devices", PARTIAL_RUNS)
def test_tagged_cells_run_on_other_device_counts(name, tag, num_devices, kernel_spec_manager,
                                                 tmp_path, monkeypatch):
  nb = _run(name, num_devices, tag, kernel_spec_manager, tmp_path, monkeypatch)
  _check_mesh_lines(nb, num_devices)
