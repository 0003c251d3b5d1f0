"""README's install command works in a fresh virtual environment: the package imports and
`python train.py --help` runs.

The environment is created empty (`python -m venv`, no system site-packages) and README.md's
first `pip install ...` command (up to a `&&`, `;` or the line's end) is run in it from the
repository root. pip reads the machine's configured index as usual; nothing here reuses the test
environment's packages.
"""

import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
# The arguments of a `pip install ...` command, up to the next `&&`, `;`, `|` or line end.
_INSTALL_COMMAND = re.compile(r"\bpip\s+install\s+([^&;|\n]+)")
INSTALL_TIMEOUT_S = 900
RUN_TIMEOUT_S = 120


def readme_install_args() -> list[str]:
  """The arguments of README.md's first `pip install` command."""
  readme = (REPO / "README.md").read_text(encoding="utf-8")
  match = _INSTALL_COMMAND.search(readme)
  assert match, "README.md has no `pip install ...` command"
  return shlex.split(match.group(1))


def fresh_env(venv: pathlib.Path) -> dict[str, str]:
  """The test's environment with the fresh venv first on PATH and no leaked Python paths."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
  env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
  env["VIRTUAL_ENV"] = str(venv)
  return env


def run(args, *, cwd, env, timeout, ok_codes=(0,)) -> subprocess.CompletedProcess:
  result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
  assert result.returncode in ok_codes, (
      f"{' '.join(map(str, args))} exited with {result.returncode}\n"
      f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}")
  return result


def test_readme_install_in_fresh_venv(tmp_path):
  install_args = readme_install_args()
  venv = tmp_path / "venv"
  run([sys.executable, "-m", "venv", venv], cwd=tmp_path, env=os.environ, timeout=RUN_TIMEOUT_S)
  python = venv / "bin" / "python"
  env = fresh_env(venv)
  # A fresh venv holds pip and nothing else.
  assert run([python, "-c", "import importlib.util as u; print(u.find_spec('jax'))"], cwd=tmp_path,
             env=env, timeout=RUN_TIMEOUT_S).stdout.strip() == "None"

  start = time.perf_counter()
  run([python, "-m", "pip", "install", "-q", *install_args], cwd=REPO, env=env,
      timeout=INSTALL_TIMEOUT_S)
  print(f"pip install {' '.join(install_args)}: {time.perf_counter() - start:.0f} s")

  # Outside the checkout, so the import comes from the installation, not the working directory.
  imported = run(
      [python, "-c", "import transformer, transformer.training.loop; print(transformer.__file__)"],
      cwd=tmp_path, env=env, timeout=RUN_TIMEOUT_S).stdout.strip()
  location = pathlib.Path(imported).resolve()
  assert (location.is_relative_to(REPO / "transformer")
          or location.is_relative_to(venv.resolve())), location

  # absl prints the usage and exits with status 1 on --help (absl.app.HelpFlag); status 0 is
  # accepted too. A missing dependency would end in a traceback instead.
  help_run = run([python, "train.py", "--help"], cwd=REPO, env=env, timeout=RUN_TIMEOUT_S,
                 ok_codes=(0, 1))
  assert "Traceback" not in help_run.stderr, help_run.stderr[-3000:]
  assert "--workdir" in help_run.stdout and "--config" in help_run.stdout, help_run.stdout
