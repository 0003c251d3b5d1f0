"""Run-directory file operations on a local disk or on Cloud Storage, through `etils.epath`.

Every file of a workdir (config.json, the tokenizer, metrics.jsonl, hypotheses, summary.json,
checkpoints through orbax) goes through this module, so `--workdir=gs://bucket/run` works like a
local path. Paths stay plain strings: a local one is made absolute, a `gs://` one is kept as it
is (`os.path.join` and `os.path.dirname` already do the right thing with it).

Cloud Storage objects are written whole: `write_atomic` uploads one object (an upload is
atomic: readers see the old or the new file, never a part), and `append` rewrites the object
with the new bytes added, which is correct for the one writer a run has (process 0) and costs
one upload of the file per call. Local files keep the POSIX behaviour: a temporary file renamed
over the target, and appends in one `write` on an O_APPEND descriptor.

`gs://` needs gcsfs (`pip install 'transformer[gcs]'`); its credentials are the usual Google
Application Default Credentials, and `STORAGE_EMULATOR_HOST` points it (and orbax's tensorstore
through `TENSORSTORE_GCS_HTTP_URL`) at an emulator.
"""

import errno
import importlib.util
import os
import shutil
import tempfile

from etils import epath

REMOTE_SCHEMES = ("gs",)  # URL schemes a workdir may use (tested against a GCS emulator).


def is_remote(path: str | os.PathLike) -> bool:
  """Whether `path` is a URL (gs://...) rather than a local path."""
  return "://" in os.fspath(path)


def normalize(path: str | os.PathLike) -> str:
  """A workdir as a string: local paths absolute, `gs://bucket/dir` without a trailing slash.

  Raises:
    ValueError: an unsupported URL scheme, a bucket-less URL, or gs:// without gcsfs installed.
  """
  path = os.fspath(path)
  if not is_remote(path):
    return os.path.abspath(path)
  scheme, rest = path.split("://", 1)
  if scheme not in REMOTE_SCHEMES:
    raise ValueError(f"{path!r}: the {scheme}:// scheme is not supported; use a local path or "
                     "gs://bucket/dir")
  rest = rest.strip("/")
  if not rest:
    raise ValueError(f"{path!r} names no bucket; use gs://bucket/dir")
  missing = [name for name, module in (("gcsfs", "gcsfs"),
                                       ("google-cloud-storage", "google.cloud.storage"))
             if not _importable(module)]
  if missing:
    raise ValueError(f"{path!r} is on Cloud Storage, which needs {' and '.join(missing)}: pip "
                     f"install 'transformer[gcs]' (or pip install {' '.join(missing)})")
  return f"{scheme}://{rest}"


def _importable(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:  # A parent package (google.cloud) is missing.
    return False


def _epath(path: str) -> epath.Path:
  return epath.Path(path)


def exists(path: str) -> bool:
  return _epath(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
  return _epath(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
  if is_remote(path):
    return _epath(path).is_file()
  return os.path.isfile(path)


def listdir(path: str) -> list[str]:
  """Names in directory `path`, sorted."""
  if is_remote(path):
    return sorted(child.name for child in _epath(path).iterdir())
  return sorted(os.listdir(path))


def makedirs(path: str) -> None:
  """Creates `path` and its parents (Cloud Storage has no directories: nothing to do)."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def read_bytes(path: str) -> bytes:
  if is_remote(path):
    return _epath(path).read_bytes()
  with open(path, "rb") as f:
    return f.read()


def read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8")


def write_atomic(path: str, data: bytes | str) -> None:
  """Writes a whole file so that readers see the old or the new content, never a part.

  The parent directory is created if needed.
  """
  if isinstance(data, str):
    data = data.encode("utf-8")
  if is_remote(path):
    _epath(path).write_bytes(data)
    return
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def append(path: str, data: bytes | str) -> None:
  """Adds `data` at the end of a file (created if missing), whole or not at all.

  A failed local write (a full disk) is cut off again, so no torn record stays behind; the
  OSError names the file.
  """
  if isinstance(data, str):
    data = data.encode("utf-8")
  if is_remote(path):
    old = read_bytes(path) if exists(path) else b""
    _epath(path).write_bytes(old + data)
    return
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    size = os.fstat(fd).st_size
    try:
      written = os.write(fd, data)
      if written != len(data):
        raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
    except OSError as e:
      try:
        os.ftruncate(fd, size)
      except OSError:
        pass  # A reader of metrics.jsonl skips a torn last line, with a warning.
      raise OSError(e.errno, e.strerror, path) from e
  finally:
    os.close(fd)


def move(source: str, target: str) -> None:
  """Moves a file or a directory tree (its parent directory is created if needed)."""
  if is_remote(source) or is_remote(target):
    if is_remote(source) != is_remote(target):
      raise ValueError(f"cannot move {source} to {target}: both must be local or both remote")
    _epath(source).rename(target)
    return
  os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
  shutil.move(source, target)


def remove_tree(path: str) -> None:
  """Deletes a directory tree (nothing if it does not exist)."""
  if is_remote(path):
    if exists(path):
      _epath(path).rmtree(missing_ok=True)
  else:
    shutil.rmtree(path, ignore_errors=True)


def copy_tree(source: str, target: str) -> None:
  """Copies a file or a directory tree from `source` to `target` (local or remote)."""
  if not is_remote(source) and not is_remote(target):
    if os.path.isdir(source):
      shutil.copytree(source, target)
    else:
      os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
      shutil.copyfile(source, target)
    return
  if not isdir(source):
    write_atomic(target, read_bytes(source))
    return
  for name in listdir(source):
    copy_tree(os.path.join(source, name), os.path.join(target, name))
