"""orbax checkpoints: round trip, other device counts, retention, fallback, averaging, config."""

import glob
import os
import shutil

import jax
import numpy as np
import pytest

import training_helpers
from transformer import checkpointing
from transformer import sharding
from transformer.training import resume


@pytest.fixture(scope="module")
def setups():
  """An FSDP-sharded 8-device setup and a 1-device setup of the same model."""
  eight = training_helpers.make_setup(sharding.MeshConfig(data=2, fsdp=4))
  one = training_helpers.make_setup(sharding.MeshConfig(), jax.devices()[:1])
  return eight, one


def _perturbed_state(setup):
  """The initial state with every float (parameters, Adam moments) moved off its init value."""
  state = setup.init_state()
  return jax.tree.map(lambda x: x + 0.5 if x.dtype.kind == "f" else x, state)


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_onto_fewer_devices(tmp_path, setups):
  eight, one = setups
  state = _perturbed_state(eight)
  checkpointer = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=2)
  checkpointer.save(1, state, config={"model": {"d_model": 32}})
  checkpointer.wait()
  # Restore the 8-device FSDP checkpoint onto 1 device.
  restored, step = checkpointer.restore(one.abstract_state_with_shardings())
  assert step == 1
  _assert_same(restored, jax.device_get(state))
  leaf = jax.tree.leaves(restored.params)[0]
  assert leaf.sharding.mesh.size == 1
  assert checkpointer.saved_config() == {"model": {"d_model": 32}}
  # And back onto the 8-device mesh, sharded as that mesh wants.
  restored_8, _ = checkpointer.restore(eight.abstract_state_with_shardings())
  _assert_same(restored_8, restored)
  checkpointer.close()


def test_keeps_last_k_and_best_and_averages_last_k(tmp_path, setups):
  _, one = setups
  state = one.init_state()
  checkpointer = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=2,
                                            best_metric="eval/bleu")
  params_by_step = {}
  for step, bleu in [(1, 5.0), (2, 30.0), (3, None), (4, 10.0), (5, None)]:
    state = state.replace(params=jax.tree.map(lambda x: x + 1.0, state.params))
    params_by_step[step] = jax.device_get(state.params)
    checkpointer.save(step, state, metrics=None if bleu is None else {"eval/bleu": bleu})
  checkpointer.wait()
  assert checkpointer.all_steps() == [2, 4, 5]  # Last two, plus the best (BLEU 30 at step 2).
  assert checkpointer.best_step() == 2
  averaged, steps = checkpointer.average_last_k(2, one.abstract_state_with_shardings())
  assert steps == [4, 5]
  for avg, a, b in zip(jax.tree.leaves(averaged.params), jax.tree.leaves(params_by_step[4]),
                       jax.tree.leaves(params_by_step[5])):
    np.testing.assert_allclose(np.asarray(avg), (np.asarray(a) + np.asarray(b)) / 2, rtol=1e-6)
  with pytest.raises(ValueError, match="needs at least 4 checkpoints"):
    checkpointer.average_last_k(4, one.abstract_state_with_shardings())
  checkpointer.close()


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, setups, caplog):
  _, one = setups
  state = one.init_state()
  directory = str(tmp_path / "checkpoints")
  checkpointer = checkpointing.Checkpointer(directory, max_to_keep=3)
  checkpointer.save(1, state)
  later = state.replace(step=state.step + 1)
  checkpointer.save(2, later)
  checkpointer.wait()
  # Corrupt step 2: delete its array data.
  for path in glob.glob(os.path.join(directory, "2", "state", "*")):
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
  with caplog.at_level("WARNING"):
    restored, step = checkpointer.restore(one.abstract_state_with_shardings())
  assert step == 1 and int(restored.step) == int(state.step)
  assert "cannot be restored" in caplog.text and "falling back to step 1" in caplog.text
  # Nothing is deleted: the bad checkpoint is moved aside.
  moved = glob.glob(str(tmp_path / "corrupt_checkpoints" / "2-*"))
  assert len(moved) == 1
  assert checkpointer.all_steps() == [1]
  checkpointer.close()


def test_when_no_checkpoint_restores_nothing_is_moved(tmp_path, setups):
  eight, one = setups
  directory = str(tmp_path / "checkpoints")
  checkpointer = checkpointing.Checkpointer(directory, max_to_keep=3)
  checkpointer.save(1, one.init_state())
  checkpointer.wait()
  # A model of another shape cannot use this checkpoint: an error, and nothing is moved.
  other = training_helpers.make_setup(sharding.MeshConfig(), jax.devices()[:1], d_model=64)
  with pytest.raises(checkpointing.UnreadableCheckpointError, match="nothing was moved"):
    checkpointer.restore(other.abstract_state_with_shardings())
  assert checkpointer.all_steps() == [1]
  assert not os.path.exists(tmp_path / "corrupt_checkpoints")
  checkpointer.close()
  del eight


def test_config_differences_name_structural_fields_only():
  saved = {"model": {"d_model": 512, "dropout_rate": 0.1}, "training": {"task": "translation",
           "num_train_steps": 10}, "data": {"vocab_size": 8000}, "optimizer": {"name": "adam"}}
  same_shape = {"model": {"d_model": 512, "dropout_rate": 0.3}, "training": {
      "task": "translation", "num_train_steps": 99}, "data": {"vocab_size": 8000},
      "optimizer": {"name": "adam"}}
  assert resume.config_differences(saved, same_shape) == []
  other = dict(same_shape, model={"d_model": 256, "dropout_rate": 0.1})
  assert resume.config_differences(saved, other) == ["model.d_model: 512 -> 256"]
  with pytest.raises(resume.IncompatibleCheckpointError, match="model.d_model"):
    resume.check_compatible(saved, other, "/tmp/run")
