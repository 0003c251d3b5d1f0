"""What survives what (README): config changes on rerun, torn metrics lines, replayed steps,
silent corruption, bad input, read-only commands, other people's files, a full disk.

Most tests copy one finished 15-step run made once per module: checkpoints and evaluations at
steps 5, 10 and 15; eval/loss never improves (learning rate 1e-30), so with patience 3 a longer
run stops early at step 20.
"""

import io
import json
import os
import shutil

import grain
import jax
import jax.numpy as jnp
import pytest

import training_helpers
from transformer import checkpointing
from transformer import data as data_lib
from transformer import metrics
from transformer import provenance
from transformer import translate
from transformer.training import inference
from transformer.training import loop
from transformer.training import errors
from transformer.training import resume


def _config(num_train_steps: int = 15):
  config = training_helpers.tiny_copy_config(num_train_steps=num_train_steps)
  config.optimizer.learning_rate = 1e-30
  config.training.best_metric = "eval/loss"
  config.training.eval_every_steps = 5
  config.training.early_stopping_patience = 3
  return config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """The finished 15-step copy-task run of the module docstring."""
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  loop.train_and_evaluate(_config(), workdir)
  return workdir


@pytest.fixture
def run_copy(finished_run, tmp_path):
  """A private copy of the finished run."""
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_run, workdir)
  return workdir


def _snapshot(directory: str) -> dict:
  """Every file under `directory` with its size and modification time."""
  files = {}
  for root, dirs, names in os.walk(directory):
    for name in dirs + names:
      path = os.path.join(root, name)
      stat = os.stat(path)
      files[os.path.relpath(path, directory)] = (stat.st_size, stat.st_mtime_ns)
  return files


def _lines(path: str) -> list[dict]:
  """Every line of a JSON-lines file, parsed (fails on a torn line)."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _flip_array_bytes(workdir: str, step: int) -> None:
  """Makes a parameter's stored data differ from the checksum saved with it, as flipped bytes
  in its data would; done on the checksum record, since the array data is zstd-compressed
  and a flip there may instead break the decompression (another, also rejected, failure)."""
  path = os.path.join(workdir, "checkpoints", str(step), "integrity", "metadata")
  with open(path, encoding="utf-8") as f:
    integrity = json.load(f)
  name = next(key for key in sorted(integrity["checksums"]) if key.startswith(".params"))
  integrity["checksums"][name][0] ^= 0xFF
  with open(path, "w", encoding="utf-8") as f:
    json.dump(integrity, f)


def test_rerun_with_changed_optimizer_restores_and_records_the_change(run_copy, caplog):
  # What the NaN message suggests, and another learning rate.
  config = _config(num_train_steps=20)
  config.optimizer.grad_clip_norm = 1.0
  config.optimizer.learning_rate = 2e-30
  with caplog.at_level("INFO"):
    summary = loop.train_and_evaluate(config, run_copy)
  assert summary["start_step"] == 15 and summary["final_step"] == 20
  assert "parameters and ScaleByAdamState(count, mu, nu)" in caplog.text
  assert "optimizer.learning_rate 1e-30 -> 2e-30 from step 15" in caplog.text
  history = _lines(os.path.join(run_copy, "config_history.jsonl"))
  assert [entry["from_step"] for entry in history] == [0, 15]
  assert history[1]["changes"] == {
      "optimizer.grad_clip_norm": [0.0, 1.0], "optimizer.learning_rate": [1e-30, 2e-30],
      "training.num_train_steps": [15, 20]}
  assert history[0]["config"]["optimizer"]["grad_clip_norm"] == 0.0
  saved = json.loads(open(os.path.join(run_copy, "config.json")).read())
  assert saved["optimizer"]["grad_clip_norm"] == 1.0


def test_a_rerun_in_another_environment_is_recorded_in_the_config_history(run_copy,
                                                                          monkeypatch):
  path = os.path.join(run_copy, "config_history.jsonl")
  first = _lines(path)
  assert [entry["from_step"] for entry in first] == [0]
  assert first[0]["environment"] == provenance.environment()
  loop.train_and_evaluate(_config(), run_copy)  # Same config, same machine: nothing to add.
  assert _lines(path) == first
  moved = json.loads(json.dumps(provenance.environment()))
  moved["devices"]["device_count"] *= 2
  moved["packages"]["jax"] = "0.0.1"
  monkeypatch.setattr(provenance, "environment", lambda: moved)
  summary = loop.train_and_evaluate(_config(num_train_steps=20), run_copy)
  history = _lines(path)
  assert [entry["from_step"] for entry in history] == [0, 15]
  assert history[1]["environment"] == moved == summary["environment"]
  assert json.load(open(os.path.join(run_copy, "summary.json")))["environment"] == moved


def test_a_changed_number_of_data_workers_continues_at_the_same_batch(finished_run, caplog):
  run = inference.load_run(finished_run)
  workers = data_lib.DataConfig(**dict(vars(run.config.data), num_workers=1))
  iterator = data_lib.make_train_iterator(workers, run.tokenizer, num_data_shards=1)
  checkpointer = checkpointing.Checkpointer(os.path.join(finished_run, "checkpoints"),
                                            max_to_keep=3, read_only=True)
  with caplog.at_level("WARNING"):
    _, step = checkpointer.restore(run.setup.abstract_inference_state_with_shardings(),
                                   data_iterator=iterator)
  checkpointer.close()
  # Saved by an iterator without workers (another state layout), continued with one worker.
  assert step == 15 and grain.experimental.get_next_index(iterator) == 15
  assert "data.num_workers changed?); continuing at batch 15" in caplog.text


def test_a_rerun_that_cannot_restore_leaves_config_json_alone(run_copy):
  for step in (5, 10, 15):
    shutil.rmtree(os.path.join(run_copy, "checkpoints", str(step), "state"))
  before = _snapshot(run_copy)
  config = _config()
  config.optimizer.learning_rate = 2e-30
  with pytest.raises(errors.TrainingError, match="no checkpoint in .* can be restored"):
    loop.train_and_evaluate(config, run_copy)
  assert _snapshot(run_copy) == before


def test_a_torn_last_line_of_metrics_jsonl_is_skipped_then_cut(run_copy, caplog):
  path = os.path.join(run_copy, "metrics.jsonl")
  complete = _lines(path)
  with open(path, "a", encoding="utf-8") as f:
    f.write('{"step": 15, "train/lo')  # A crash or a full disk in the middle of a write.
  with caplog.at_level("WARNING"):
    assert metrics.read_jsonl(path) == complete
  assert f"{path} line {len(complete) + 1} is not a complete metrics record" in caplog.text
  summary_json = open(os.path.join(run_copy, "summary.json")).read()
  again = loop.train_and_evaluate(_config(), run_copy)  # Finished: nothing to do.
  assert again == json.loads(summary_json)
  assert open(os.path.join(run_copy, "summary.json")).read() == summary_json
  assert _lines(path) == complete


def test_a_full_disk_names_the_file_leaves_no_torn_line_and_the_checkpoint_resumes(
    run_copy, monkeypatch):
  real_write = os.write

  def write_half_then_fail(fd, data):
    if os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.jsonl"):
      return real_write(fd, data[:len(data) // 2])  # A full disk: a short write.
    return real_write(fd, data)

  monkeypatch.setattr(os, "write", write_half_then_fail)
  with pytest.raises(errors.TrainingError) as info:
    loop.train_and_evaluate(_config(num_train_steps=20), run_copy)
  message = str(info.value)
  assert f"could not write {run_copy}/metrics.jsonl (the disk is full)" in message
  assert f"the last checkpoint, step 15 in {run_copy}/checkpoints, is intact" in message
  path = os.path.join(run_copy, "metrics.jsonl")
  assert max(r["step"] for r in _lines(path)) == 15  # Every line whole; nothing of step 20.
  monkeypatch.undo()
  assert inference.load_run(run_copy).steps == [15]  # Restores, checksums verified.


def test_replayed_steps_are_superseded_and_early_stopping_counts_each_evaluation_once(
    run_copy):
  workdir = run_copy
  config = _config()
  # As after a kill -9 that came before the checkpoints of steps 10 and 15 were written.
  for step in (10, 15):
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
  os.remove(os.path.join(workdir, "summary.json"))
  loop.train_and_evaluate(config, workdir)  # Resumes at 5 and replays 6..15.
  records = _lines(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in records if "eval/loss" in r] == [5, 10, 15]
  assert [r["step"] for r in records if "train/loss" in r] == [5, 10, 15]
  superseded = _lines(os.path.join(workdir, "metrics.jsonl.superseded"))
  assert sorted({r["step"] for r in superseded}) == [10, 15]
  # What early stopping counts on the next resume: 2 evaluations without improvement, not 4.
  best, evaluations_since = resume.best_so_far(os.path.join(workdir, "metrics.jsonl"),
                                              "eval/loss", up_to_step=15)
  assert best[1] == 5 and evaluations_since == 2


def test_flipped_bytes_in_array_data_make_a_rerun_fall_back_and_move_the_checkpoint_aside(
    run_copy, caplog):
  data_dir = os.path.join(run_copy, "checkpoints", "15", "state", "ocdbt.process_0", "d")
  path = max((os.path.join(data_dir, n) for n in os.listdir(data_dir)), key=os.path.getsize)
  with open(path, "rb+") as f:
    data = bytearray(f.read())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    f.seek(0)
    f.write(data)
  os.remove(os.path.join(run_copy, "summary.json"))
  with caplog.at_level("WARNING"):
    summary = loop.train_and_evaluate(_config(), run_copy)  # Reads the whole state.
  # Compressed data: the flip is either a read error or a checksum mismatch; both are caught.
  assert "Checkpoint at step 15 cannot be restored" in caplog.text
  assert summary["start_step"] == 10 and summary["final_step"] == 15
  assert len(os.listdir(os.path.join(run_copy, "corrupt_checkpoints"))) == 1


def test_flipped_bytes_a_missing_iterator_state_or_nan_make_a_checkpoint_corrupt(
    run_copy, tmp_path, caplog):
  _flip_array_bytes(run_copy, 15)
  before = _snapshot(run_copy)
  with caplog.at_level("WARNING"):
    run = inference.load_run(run_copy)
  assert run.steps == [10]
  assert "Checkpoint at step 15 cannot be restored" in caplog.text
  assert "does not match the checksums saved with it" in caplog.text
  assert _snapshot(run_copy) == before  # Read-only: nothing moved, nothing created.

  # A checkpoint without its data-iterator state would restart the data at batch 0.
  shutil.rmtree(os.path.join(run_copy, "checkpoints", "10", "data"))
  checkpointer = checkpointing.Checkpointer(os.path.join(run_copy, "checkpoints"),
                                            max_to_keep=3, read_only=True)
  iterator = data_lib.make_train_iterator(run.config.data, run.tokenizer, num_data_shards=1)
  abstract = run.setup.abstract_inference_state_with_shardings()
  with caplog.at_level("WARNING"):
    assert checkpointer.restore(abstract, data_iterator=iterator)[1] == 5
  assert ("step 10 cannot be restored (CorruptCheckpointError: "
          f"{run_copy}/checkpoints/10/data (the data-iterator state) is missing)") in caplog.text
  checkpointer.close()

  # A state holding NaN is never saved, so never restored as a good checkpoint.
  with_nan = run.state.replace(params=jax.tree.map(
      lambda x: x.at[(0,) * x.ndim].set(jnp.nan), run.state.params))
  checkpointer = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=3)
  assert not checkpointer.save(11, with_nan)
  assert checkpointer.save(12, run.state)
  checkpointer.close()
  assert checkpointing.steps_of(str(tmp_path / "checkpoints")) == [12]


@pytest.mark.parametrize("section, field, value, message", [
    ("model", "d_model", 0, "config.model: d_model must be a positive integer, got 0"),
    ("model", "d_model", -8, "config.model: d_model must be a positive integer, got -8"),
    ("optimizer", "warmup_steps", 0, "optimizer.warmup_steps must be >= 1 with the rsqrt"),
])
def test_bad_config_values_are_refused_before_anything_is_written(tmp_path, section, field,
                                                                  value, message):
  config = _config()
  config[section][field] = value
  with pytest.raises(errors.TrainingError, match=message) as info:
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")
  assert type(info.value).__name__ == "UsageError"  # train.py exits with status 2.


def test_unusable_workdirs_are_refused_and_left_alone(tmp_path, monkeypatch):
  a_file = tmp_path / "notes.txt"
  a_file.write_text("mine")
  with pytest.raises(errors.TrainingError, match="is a file, not a directory"):
    loop.train_and_evaluate(_config(), str(a_file))
  assert a_file.read_text() == "mine"
  for name, text in (("config.json", '{"learning_rate": 1}'), ("summary.json", "{}")):
    users = tmp_path / f"users_{name}"
    users.mkdir()
    (users / name).write_text(text)
    with pytest.raises(errors.TrainingError,
                       match=f"not empty and holds no train.py run .*{name}"):
      loop.train_and_evaluate(_config(), str(users))
    assert os.listdir(users) == [name] and (users / name).read_text() == text
  # Read-only (chmod does not stop root, who runs CI, so os.access answers for a read-only
  # mount here).
  read_only = tmp_path / "read_only"
  read_only.mkdir()
  real_access = os.access
  monkeypatch.setattr(os, "access", lambda path, mode: False if str(path).startswith(
      str(read_only)) else real_access(path, mode))
  with pytest.raises(errors.TrainingError, match="cannot be written"):
    loop.train_and_evaluate(_config(), str(read_only / "run"))
  assert os.listdir(read_only) == []


def test_a_failed_data_check_writes_nothing(tmp_path):
  config = _config()
  config.data.dataset = f"tsv:{tmp_path}/missing_{{split}}.tsv"
  with pytest.raises(errors.TrainingError, match="missing_train.tsv"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def _translate(capsys, monkeypatch, workdir, stdin=b"1 2 3\n", **flag_values):
  """(exit status, stdout, stderr) of `python -m transformer.translate`, run in this process
  (through the command's function: the flags of other tests' modules share this process)."""
  del capsys, monkeypatch
  out, err = io.StringIO(), io.StringIO()
  values = dict(input_path=None, beam_size=None, length_penalty=None, average_last_k=1,
                step=None, batch_size=32) | flag_values
  status = translate.run_command(workdir, **values, stdin=io.BytesIO(stdin), stdout=out,
                                 stderr=err)
  return status, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("flag_values, stdin, message", [
    (dict(batch_size=0), b"1 2\n", "--batch_size must be >= 1, got 0"),
    (dict(batch_size=-1), b"1 2\n", "--batch_size must be >= 1, got -1"),
    (dict(beam_size=0), b"1 2\n", "--beam_size must be >= 1, got 0"),
    (dict(), b"1 2\n3 \xff 4\n", "the standard input is not valid UTF-8: line 2 holds the byte "
     "0xff"),
])
def test_translate_refuses_bad_flags_and_input_in_one_line(finished_run, capsys, monkeypatch,
                                                          flag_values, stdin, message):
  status, out, err = _translate(capsys, monkeypatch, finished_run, stdin, **flag_values)
  assert (status, out) == (2, "")
  assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_translate_reports_unusable_workdirs_in_one_line_and_writes_nothing(
    run_copy, tmp_path, capsys, monkeypatch):
  no_checkpoints = tmp_path / "no_checkpoints"
  no_checkpoints.mkdir()
  shutil.copy(os.path.join(run_copy, "config.json"), no_checkpoints)
  status, _, err = _translate(capsys, monkeypatch, str(no_checkpoints))
  assert status == 1 and "holds no checkpoint yet" in err and err.count("\n") == 1
  assert os.listdir(no_checkpoints) == ["config.json"]
  for step in (5, 10, 15):
    _flip_array_bytes(run_copy, step)
  before = _snapshot(run_copy)
  status, out, err = _translate(capsys, monkeypatch, run_copy)
  assert (status, out) == (1, "")
  assert err.startswith(f"error: no checkpoint in {run_copy}/checkpoints can be restored")
  assert err.count("\n") == 1
  assert _snapshot(run_copy) == before
