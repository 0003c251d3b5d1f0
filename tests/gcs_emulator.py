"""A local Cloud Storage emulator for the tests (gcp-storage-emulator), run as its own process.

  python tests/gcs_emulator.py PORT BUCKET

Serves the GCS JSON API on localhost:PORT with an in-memory BUCKET until killed. One mend:
the emulator's media downloads omit the `x-goog-generation` header that Cloud Storage sends with
every object read, and tensorstore (orbax's array store) refuses a read without it ("Malformed
StorageGeneration"); the download handler here adds it from the object's metadata.
"""

import sys

from gcp_storage_emulator import server
from gcp_storage_emulator.handlers import objects


_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
  _download(request, response, storage, *args, **kwargs)
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except Exception:  # Not found: the download already answered 404.
    return
  response["x-goog-generation"] = str(obj["generation"])
  response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))


def _mended_handlers(handlers):
  return tuple(
      (regex, {method: _download_with_generation if handler is _download else handler
               for method, handler in methods.items()})
      for regex, methods in handlers)


def main(port: int, bucket: str) -> None:
  objects.download = _download_with_generation  # Also reached through objects.get(alt=media).
  server.HANDLERS = _mended_handlers(server.HANDLERS)
  server.create_server("localhost", port, in_memory=True, default_bucket=bucket).run()


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2])
