"""The package as a library: every module imports in one process, none defines absl flags."""

import subprocess
import sys

_SCRIPT = """
import importlib, pkgutil
from absl import flags
import transformer
names = [m.name for m in pkgutil.walk_packages(transformer.__path__, "transformer.")]
for name in names:
  importlib.import_module(name)
owners = [m for m in flags.FLAGS.flags_by_module_dict() if m.startswith("transformer")]
print(len(names), owners)
"""


def test_every_module_imports_in_one_process_and_defines_no_flag():
  result = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  count, owners = result.stdout.split(" ", 1)
  assert int(count) >= 40  # Every module was found.
  assert owners.strip() == "[]", f"modules defining absl flags at import: {owners}"
