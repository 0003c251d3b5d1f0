"""Readers of what a run logs, for the tests: TensorBoard event files (without TensorFlow or
tensorboard) and the records of an offline Weights & Biases run."""

import collections
import dataclasses
import glob
import json
import os
import struct

from tensorboardX.proto import event_pb2


@dataclasses.dataclass
class TensorBoardEvents:
  """What the event files of one TensorBoard run directory hold."""

  scalars: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
  texts: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
  hparams: dict = dataclasses.field(default_factory=dict)  # Of the last session start.
  hparam_metrics: list = dataclasses.field(default_factory=list)
  purge_steps: list = dataclasses.field(default_factory=list)  # Of each resumed writer.


def _tfrecords(path: str):
  """The payloads of a TFRecord file (length, its CRC, data, its CRC; CRCs not checked)."""
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos + 12 <= len(data):
    (length,) = struct.unpack("<Q", data[pos:pos + 8])
    yield data[pos + 12:pos + 12 + length]
    pos += 12 + length + 4


def read_tensorboard_events(run_dir: str) -> TensorBoardEvents:
  """Scalars and texts by tag as [(step, value)], in file order, and the hparams; a purge step
  (a resumed writer) drops the earlier events at or after it, as TensorBoard does."""
  from tensorboardX.proto import plugin_hparams_pb2  # pylint: disable=g-import-not-at-top

  out = TensorBoardEvents()
  for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
    for payload in _tfrecords(path):
      event = event_pb2.Event.FromString(payload)
      if event.HasField("session_log") and event.session_log.status == 1:  # START
        out.purge_steps.append(event.step)
        for series in list(out.scalars.values()) + list(out.texts.values()):
          series[:] = [(s, v) for s, v in series if s < event.step]
      for value in event.summary.value:
        plugin = value.metadata.plugin_data.plugin_name
        if plugin == "text":
          tag = value.tag.removesuffix("/text_summary")
          out.texts[tag].append((event.step, value.tensor.string_val[0].decode("utf-8")))
        elif plugin == "hparams":
          content = plugin_hparams_pb2.HParamsPluginData.FromString(
              value.metadata.plugin_data.content)
          if content.HasField("experiment"):
            out.hparam_metrics = [m.name.tag for m in content.experiment.metric_infos]
          if content.HasField("session_start_info"):
            out.hparams = dict(content.session_start_info.hparams)
        elif value.HasField("simple_value"):
          out.scalars[value.tag].append((event.step, value.simple_value))
  return out


def _wandb_records(path: str):
  """The Record protos of a .wandb file: a LevelDB-style log of 32 KiB blocks, each record in
  chunks with a 7-byte header (CRC, length, type: 1 full, 2 first, 3 middle, 4 last)."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top

  with open(path, "rb") as f:
    data = f.read()
  assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
  pos, block, chunks = 7, 32768, b""
  while pos + 7 <= len(data):
    left = block - pos % block
    _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
    if left < 7 or (length == 0 and kind == 0):
      pos += left  # Padding at the end of a block.
      continue
    chunks += data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):
      yield wandb_internal_pb2.Record.FromString(chunks)
      chunks = b""


def read_wandb_offline_run(run_dir: str) -> dict:
  """{"id": the run id, "history": [{key: value} per logged step, with "_step"], "config":
  {key: value}} of an offline W&B run directory (wandb/offline-run-*)."""
  (path,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
  out = {"id": None, "history": [], "config": {}}
  for record in _wandb_records(path):
    kind = record.WhichOneof("record_type")
    if kind == "run":
      out["id"] = record.run.run_id
    elif kind == "history":
      out["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    elif kind == "config":
      for item in record.config.update:
        out["config"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
  return out
