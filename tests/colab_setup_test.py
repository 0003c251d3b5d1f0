"""The notebooks' setup cell decides right on a fresh Colab runtime, without network or pip.

The cell's source is read from the notebook JSON; everything above its last statements (the call
of `set_up` and the jax import) is executed, and `set_up` runs with its environment replaced:
the installed distributions, the runtime (TPU / GPU / CPU), the modules already imported, and
the command runner (git and pip are recorded, never run). Cases: the package is importable, jax
is present and in pyproject's range, jax is absent, jax is present but out of range, pip cannot
keep the pinned versions, no repository location; plus the runs directory (Google Drive).
"""

import ast
import functools
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import tomllib

import jax
import nbformat
import pytest
from packaging import requirements

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = ("quickstart.ipynb", "attention_explained.ipynb", "research_api.ipynb")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
JAX_RANGE = next(requirements.Requirement(d).specifier
                 for d in PYPROJECT["project"]["dependencies"]
                 if requirements.Requirement(d).name == "jax")
COMPATIBLE_JAX = jax.__version__  # The test environment satisfies pyproject.
INCOMPATIBLE_JAX = "0.4.38"
URL = "https://github.com/someone/transformer.git"
# What a fresh Colab runtime has of transformer's dependencies besides jax (plus the plots).
PREINSTALLED = {"numpy": "2.0.2", "absl-py": "2.3.1", "tqdm": "4.67.1", "matplotlib": "3.10.0"}
RUNTIME_PLUGINS = {"tpu": {"libtpu": "0.0.17"}, "gpu": {"jax-cuda12-plugin": COMPATIBLE_JAX,
                                                       "jax-cuda12-pjrt": COMPATIBLE_JAX},
                   "cpu": {}}


def setup_source(name: str) -> str:
  nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
  return next(c.source for c in nb.cells if c.cell_type == "code")


@functools.cache
def _cell_definitions():
  """The setup cell's definitions (all statements before the one that calls `set_up`)."""
  tree = ast.parse(setup_source(NOTEBOOKS[0]))
  driver = next(i for i, node in enumerate(tree.body)
                if any(isinstance(n, ast.Name) and n.id == "set_up" for n in ast.walk(node))
                and not isinstance(node, ast.FunctionDef))
  return compile(ast.Module(body=tree.body[:driver], type_ignores=[]), "<setup cell>", "exec")


def load_cell() -> dict:
  """A fresh namespace holding the setup cell's definitions."""
  namespace = {"__name__": "setup_cell"}
  exec(_cell_definitions(), namespace)
  return namespace


def make_checkout(path: pathlib.Path) -> pathlib.Path:
  """A directory that looks like the repository, with the real pyproject.toml."""
  (path / "configs").mkdir(parents=True)
  (path / "transformer").mkdir()
  shutil.copy(REPO / "pyproject.toml", path / "pyproject.toml")
  return path


@functools.cache
def dependency_versions() -> dict[str, str]:
  """A version inside each of pyproject's ranges: the test environment's own."""
  cell = load_cell()
  versions = cell["installed_versions"]()
  return {name: versions[name] for name in (
      cell["canonical"](requirements.Requirement(d).name)
      for d in PYPROJECT["project"]["dependencies"])}


def satisfies(name: str, version: str) -> bool:
  canonical = load_cell()["canonical"]
  return next(requirements.Requirement(d).specifier.contains(version)
              for d in PYPROJECT["project"]["dependencies"]
              if canonical(requirements.Requirement(d).name) == name)


class FakeMachine:
  """The installed distributions, imported modules and git / pip of a pretend runtime."""

  def __init__(self, installed: dict[str, str], *, imported=(), pip_codes=(0,),
               upgrades: dict[str, str] | None = None):
    self.installed = dict(installed)
    self.imported = set(imported)
    self.pip_codes = list(pip_codes)
    self.upgrades = upgrades or {}  # What a successful pip install changes or adds.
    self.commands, self.constraints = [], []

  def run_command(self, args):
    self.commands.append(list(args))
    if args[0] == "git":
      make_checkout(pathlib.Path(args[-1]))
      return subprocess.CompletedProcess(args, 0, "", "")
    assert args[1:4] == ["-m", "pip", "install"], args
    self.constraints.append(pathlib.Path(args[args.index("-c") + 1]).read_text().split()
                            if "-c" in args else None)
    code = self.pip_codes.pop(0)
    if code == 0:  # pip upgrades only what does not satisfy its requirement.
      self.installed.update({name: version for name, version in dependency_versions().items()
                             if not satisfies(name, self.installed.get(name, "0"))})
      self.installed["transformer"] = "0.1.0"
      self.installed.update(self.upgrades)
    return subprocess.CompletedProcess(args, code, "", "ERROR: ResolutionImpossible" * code)

  def pip_calls(self):
    return [c for c in self.commands if c[0] != "git"]


@pytest.fixture
def cell(monkeypatch, tmp_path):
  """The cell's namespace, run from a directory with no checkout nearby; sys.path restored."""
  monkeypatch.setattr(sys, "path", list(sys.path))
  monkeypatch.setenv("TRANSFORMER_SETUP_NEEDS_RESTART", "")
  (tmp_path / "notebooks").mkdir()
  monkeypatch.chdir(tmp_path / "notebooks")
  namespace = load_cell()
  namespace["CLONE_DIR"] = str(tmp_path / "transformer-repo")
  namespace["mount_google_drive"] = lambda path: pytest.fail("Drive mounted")
  return namespace


def fresh_colab(cell, machine: FakeMachine, runtime: str) -> None:
  """No transformer installed; `machine` supplies everything else."""
  cell["installed_requirements"] = lambda: None
  cell["installed_versions"] = lambda: dict(machine.installed)
  cell["imported_distributions"] = lambda: set(machine.imported)
  cell["runtime_kind"] = lambda: runtime
  cell["run_command"] = machine.run_command


def test_setup_cell_is_identical_in_every_notebook():
  sources = {name: setup_source(name) for name in NOTEBOOKS}
  assert len(set(sources.values())) == 1, "the notebooks' setup cells differ"


def test_committed_defaults():
  cell = load_cell()
  tree = ast.parse(setup_source(NOTEBOOKS[0]))
  assert isinstance(tree.body[0], ast.Assign) and tree.body[0].targets[0].id == "TRANSFORMER_REPO"
  assert "<OWNER>" in cell["TRANSFORMER_REPO"], "commit the placeholder, not a fork's URL"
  assert cell["USE_GOOGLE_DRIVE"] is False
  assert COMPATIBLE_JAX in JAX_RANGE and INCOMPATIBLE_JAX not in JAX_RANGE


def test_installed_package_needs_nothing(cell, monkeypatch, capsys):
  """This environment, from notebooks/ of the checkout: no git, no pip, checkout on sys.path."""
  monkeypatch.chdir(NOTEBOOK_DIR)
  cell["run_command"] = lambda args: pytest.fail(f"ran {args}")
  needs_install, repo_dir, runs_dir = cell["set_up"](cell["TRANSFORMER_REPO"], False, False)
  assert (needs_install, repo_dir) == (False, str(REPO))
  assert runs_dir == os.path.join(tempfile.gettempdir(), "transformer-notebooks")
  assert str(REPO) in sys.path
  assert "nothing to install" in capsys.readouterr().out
  assert cell["runtime_kind"]() == "cpu"  # This machine: no TPU, no GPU.


def test_installed_copy_without_checkout(cell, capsys):
  """An installed copy wins: the placeholder is fine; a URL is cloned for `configs` only."""
  cell["run_command"] = lambda args: pytest.fail(f"ran {args}")
  needs_install, repo_dir, _ = cell["set_up"](cell["TRANSFORMER_REPO"], False, False)
  assert (needs_install, repo_dir) == (False, None)
  assert "cells that import `configs` need one" in capsys.readouterr().out

  machine = FakeMachine({})
  cell["run_command"] = machine.run_command
  needs_install, repo_dir, _ = cell["set_up"](URL, False, False)
  assert (needs_install, repo_dir) == (False, cell["CLONE_DIR"])
  assert machine.commands == [["git", "clone", "--depth=1", URL, cell["CLONE_DIR"]]]


def test_installed_copy_missing_dependencies(cell, capsys):
  """No checkout: pip installs just the unmet requirements, jax with the runtime's plugin."""
  versions = {**PREINSTALLED, **dependency_versions(), "transformer": "0.1.0"}
  del versions["grain"], versions["jax"]
  machine = FakeMachine(versions)
  fresh_colab(cell, machine, "tpu")
  cell["installed_requirements"] = lambda: PYPROJECT["project"]["dependencies"]
  assert cell["set_up"](cell["TRANSFORMER_REPO"], False, True)[:2] == (True, None)
  [pip] = machine.pip_calls()
  grain, jax_requirement = [next(d for d in PYPROJECT["project"]["dependencies"]
                                 if d.startswith(name)) for name in ("grain", "jax")]
  assert pip[5:] == [str(requirements.Requirement(jax_requirement.replace("jax", "jax[tpu]"))),
                     str(requirements.Requirement(grain)), "-c", pip[-1]]
  assert "what the installed transformer lacks" in capsys.readouterr().out


@pytest.mark.parametrize("runtime", ["tpu", "gpu", "cpu"])
def test_compatible_jax_is_kept(cell, capsys, runtime):
  preinstalled = {**PREINSTALLED, "jax": COMPATIBLE_JAX, "jaxlib": COMPATIBLE_JAX,
                  **RUNTIME_PLUGINS[runtime]}
  machine = FakeMachine(preinstalled, imported={"numpy", "ipython"})
  fresh_colab(cell, machine, runtime)
  needs_install, repo_dir, _ = cell["set_up"](URL, False, True)
  assert (needs_install, repo_dir) == (True, cell["CLONE_DIR"])
  [pip] = machine.pip_calls()
  assert pip[pip.index("-e") + 1] == cell["CLONE_DIR"]  # No [tpu] / [gpu]: jax stays.
  pins = set(machine.constraints[0])
  assert {f"jax=={COMPATIBLE_JAX}", f"jaxlib=={COMPATIBLE_JAX}", "numpy==2.0.2"} <= pins
  assert {f"{n}=={v}" for n, v in RUNTIME_PLUGINS[runtime].items()} <= pins
  out = capsys.readouterr().out
  assert f"Keeping the installed jax {COMPATIBLE_JAX}" in out
  assert "no restart needed" in out and cell["RESTART_LINE"] not in out
  assert cell["CLONE_DIR"] in sys.path


@pytest.mark.parametrize("runtime, extra", [("tpu", "[tpu]"), ("gpu", "[gpu]"), ("cpu", "")])
def test_absent_jax_comes_with_the_runtime_plugin(cell, capsys, runtime, extra):
  machine = FakeMachine(PREINSTALLED, imported={"numpy"})
  fresh_colab(cell, machine, runtime)
  needs_install, _, _ = cell["set_up"](URL, False, True)
  assert needs_install is True
  [pip] = machine.pip_calls()
  assert pip[pip.index("-e") + 1] == cell["CLONE_DIR"] + extra
  assert not any(pin.startswith("jax") for pin in machine.constraints[0])
  assert "numpy==2.0.2" in machine.constraints[0]
  out = capsys.readouterr().out
  assert f"jax is not installed: pip installs jax{extra} ({runtime} runtime)" in out
  assert cell["RESTART_LINE"] not in out


@pytest.mark.parametrize("jax_imported", [False, True])
def test_incompatible_jax_is_replaced(cell, capsys, jax_imported):
  preinstalled = {**PREINSTALLED, "jax": INCOMPATIBLE_JAX, "jaxlib": INCOMPATIBLE_JAX,
                  "libtpu": "0.0.8"}
  machine = FakeMachine(preinstalled, imported={"numpy", "jax", "jaxlib"} if jax_imported
                        else {"numpy"}, upgrades={"jaxlib": COMPATIBLE_JAX, "libtpu": "0.0.17"})
  fresh_colab(cell, machine, "tpu")
  if not jax_imported:  # jax not imported yet (a fresh runtime): the new one loads, no restart.
    assert cell["set_up"](URL, False, True)[0] is True
    assert "no restart needed" in capsys.readouterr().out
  else:
    with pytest.raises(cell["RestartRequired"]):
      cell["set_up"](URL, False, True)
    out = capsys.readouterr().out
    assert out.count(cell["RESTART_LINE"]) == 1
    assert f"jax {INCOMPATIBLE_JAX} -> {COMPATIBLE_JAX}" in out
    # Running the cell again before restarting repeats the instruction, installs nothing.
    with pytest.raises(cell["RestartRequired"]):
      cell["set_up"](URL, False, True)
    assert capsys.readouterr().out.strip() == cell["RESTART_LINE"]
  [pip] = machine.pip_calls()
  assert pip[pip.index("-e") + 1] == cell["CLONE_DIR"] + "[tpu]"
  assert not any(pin.startswith(("jax", "libtpu")) for pin in machine.constraints[0])


def test_pins_that_pip_cannot_keep_are_released(cell, capsys, monkeypatch):
  preinstalled = {**PREINSTALLED, "jax": COMPATIBLE_JAX, "jaxlib": COMPATIBLE_JAX}
  machine = FakeMachine(preinstalled, imported={"numpy"}, pip_codes=(1, 0),
                        upgrades={"numpy": "2.3.0"})
  fresh_colab(cell, machine, "gpu")
  with pytest.raises(cell["RestartRequired"]):
    cell["set_up"](URL, False, True)
  first, second = machine.pip_calls()
  assert machine.constraints[0] and machine.constraints[1] is None
  assert second[second.index("-e") + 1] == cell["CLONE_DIR"] + "[gpu]"  # Plugin kept in step.
  out = capsys.readouterr().out
  assert "pip cannot keep all of these versions" in out and "numpy 2.0.2 -> 2.3.0" in out

  monkeypatch.setenv("TRANSFORMER_SETUP_NEEDS_RESTART", "")  # As after a restart.
  machine = FakeMachine(PREINSTALLED, pip_codes=(1, 1))  # With the pins, then without.
  fresh_colab(cell, machine, "cpu")
  with pytest.raises(RuntimeError, match="pip install failed"):
    cell["set_up"](URL, False, True)


def test_missing_repository_location_is_explained(cell):
  machine = FakeMachine(PREINSTALLED)
  fresh_colab(cell, machine, "tpu")
  with pytest.raises(ValueError, match="set TRANSFORMER_REPO at the top of this cell"):
    cell["set_up"](cell["TRANSFORMER_REPO"], False, True)
  with pytest.raises(ValueError, match="is not a checkout"):
    cell["set_up"](str(pathlib.Path.cwd()), False, True)
  assert machine.commands == []


def test_local_checkout_and_existing_clone_are_used(cell, tmp_path, capsys):
  machine = FakeMachine({**PREINSTALLED, **dependency_versions()})
  fresh_colab(cell, machine, "cpu")
  checkout = make_checkout(tmp_path / "my checkout")
  assert cell["set_up"](str(checkout), False, True)[:2] == (False, str(checkout))
  make_checkout(pathlib.Path(cell["CLONE_DIR"]))
  assert cell["set_up"](URL, False, True)[:2] == (False, cell["CLONE_DIR"])
  assert "Using the clone in" in capsys.readouterr().out
  assert machine.commands == []


@pytest.mark.parametrize("spec, expected", [
    (URL, (URL, None)),
    ("git+https://github.com/o/transformer.git@v1.0", ("https://github.com/o/transformer.git",
                                                      "v1.0")),
    ("git@github.com:o/transformer.git", ("git@github.com:o/transformer.git", None)),
    ("ssh://git@host/o/t.git@dev", ("ssh://git@host/o/t.git", "dev")),
    ("/content/my-transformer", None),
    ("../transformer", None),
])
def test_parse_git_spec(spec, expected):
  assert load_cell()["parse_git_spec"](spec) == expected


def test_clone_of_a_revision(cell):
  machine = FakeMachine({**PREINSTALLED, **dependency_versions()})
  fresh_colab(cell, machine, "cpu")
  cell["set_up"]("git+https://github.com/o/transformer.git@v1", False, True)
  assert machine.commands == [["git", "clone", "--depth=1", "--branch", "v1",
                               "https://github.com/o/transformer.git", cell["CLONE_DIR"]]]


@pytest.mark.parametrize("devices, nvidia_smi, expected", [
    ({"/dev/accel*": ["/dev/accel0"]}, None, "tpu"),
    ({"/dev/vfio/[0-9]*": ["/dev/vfio/0"]}, None, "tpu"),  # v5e: Colab's TPU runtime.
    ({}, "/usr/bin/nvidia-smi", "gpu"),
    ({"/dev/nvidia[0-9]*": ["/dev/nvidia0"]}, None, "gpu"),
    ({}, None, "cpu"),
])
def test_runtime_kind(devices, nvidia_smi, expected):
  kind = load_cell()["runtime_kind"](glob_fn=lambda pattern: devices.get(pattern, []),
                                     which=lambda name: nvidia_smi)
  assert kind == expected


def test_runs_directory(cell):
  mounted = []
  cell["mount_google_drive"] = mounted.append
  runs_directory = cell["runs_directory"]
  assert runs_directory(True, True) == "/content/drive/MyDrive/transformer-runs"
  assert mounted == ["/content/drive"]
  assert runs_directory(False, True) == "/content/runs"
  assert runs_directory(False, False) == os.path.join(tempfile.gettempdir(),
                                                      "transformer-notebooks")
  with pytest.raises(ValueError, match="USE_GOOGLE_DRIVE = True works on Colab only"):
    runs_directory(True, False)
  assert mounted == ["/content/drive"]
