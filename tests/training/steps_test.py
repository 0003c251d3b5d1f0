"""Train / eval steps: 8-device sharding equals 1 device, one trace per shape, reproducibility,
dropout, bf16 compute and the three model families."""

import jax
import numpy as np
import pytest

import training_helpers
from transformer import sharding

# Adam's eps is 1e-3 in these tests, not the paper's 1e-9: the attention key biases have an
# exactly zero gradient (softmax ignores a constant added to a row of logits), and with eps=1e-9
# Adam divides the float rounding noise (~1e-9) of those zero gradients by ~eps, turning it into
# ~lr-sized updates whose sign depends on the reduction order, i.e. on the device count.
_EPS = 1e-3


def _run_steps(setup, batches):
  state = setup.init_state()
  metrics = []
  for batch in batches:
    state, m = setup.train_step(state, sharding.make_global_batch(batch, setup.mesh))
    metrics.append(jax.device_get(m))
  return jax.device_get(state), metrics


@pytest.fixture(scope="module")
def one_device():
  """A 1-device setup with dropout 0.1 and the results of two train steps."""
  setup = training_helpers.make_setup(sharding.MeshConfig(), jax.devices()[:1], eps=_EPS)
  batches = [training_helpers.make_batch(seed) for seed in (0, 1)]
  state, metrics = _run_steps(setup, batches)
  return setup, batches, state, metrics


def test_sharded_step_over_8_devices_equals_1_device(one_device):
  """Tolerance: 1e-5 absolute on every parameter and Adam moment after two steps (dropout on),
  1e-5 relative on the metric sums (loss, accuracy, gradient norm)."""
  _, batches, state_1, metrics_1 = one_device
  eight = training_helpers.make_setup(sharding.MeshConfig(data=4, fsdp=2), eps=_EPS)
  assert eight.mesh.size == 8
  state_8, metrics_8 = _run_steps(eight, batches)
  for m1, m8 in zip(metrics_1, metrics_8):
    for key in m1:
      np.testing.assert_allclose(m8[key], m1[key], rtol=1e-5, err_msg=key)
  flat_1 = jax.tree_util.tree_leaves_with_path(state_1)
  flat_8 = jax.tree.leaves(state_8)
  assert len(flat_1) == len(flat_8)
  for (path, a), b in zip(flat_1, flat_8):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5,
                               err_msg=jax.tree_util.keystr(path))
  assert int(state_8.step) == 2
  assert eight.trace_counts["train"] == 1


def test_each_step_is_traced_once_and_steps_are_deterministic(one_device):
  setup, batches, state_2, _ = one_device
  # Rerunning from the initial state gives bit-identical parameters (dropout keys are
  # fold_in(rng, step)), and more calls with the same shapes do not retrace.
  state, _ = _run_steps(setup, batches + batches)
  again, _ = _run_steps(setup, batches)
  for a, b in zip(jax.tree.leaves(state_2.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(state.step) == 4
  global_batch = sharding.make_global_batch(batches[0], setup.mesh)
  for _ in range(3):
    setup.eval_step(state, global_batch)
  assert setup.trace_counts["train"] == 1
  assert setup.trace_counts["eval"] == 1


def test_dropout_is_active_in_training_only(one_device):
  setup, batches, _, metrics = one_device
  state = setup.init_state()
  global_batch = sharding.make_global_batch(batches[0], setup.mesh)
  eval_1 = jax.device_get(setup.eval_step(state, global_batch))
  eval_2 = jax.device_get(setup.eval_step(state, global_batch))
  assert eval_1["loss_sum"] == eval_2["loss_sum"]
  # Same parameters; training (dropout 0.1) gives another loss than evaluation.
  assert abs(metrics[0]["loss_sum"] - eval_1["loss_sum"]) > 1e-3 * eval_1["loss_sum"]


def test_bfloat16_compute_keeps_float32_parameters(one_device):
  f32, batches, _, _ = one_device
  bf16 = training_helpers.make_setup(sharding.MeshConfig(), jax.devices()[:1], dtype="bfloat16",
                                     eps=_EPS)
  global_batch = sharding.make_global_batch(batches[0], bf16.mesh)
  state = bf16.init_state()
  loss_bf16 = float(bf16.eval_step(state, global_batch)["loss_sum"])
  loss_f32 = float(f32.eval_step(f32.init_state(), global_batch)["loss_sum"])
  np.testing.assert_allclose(loss_bf16, loss_f32, rtol=2e-2)
  state, metrics = bf16.train_step(state, global_batch)
  assert np.isfinite(float(metrics["loss_sum"]))
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float32")}


@pytest.mark.parametrize("task", ["lm", "mlm"])
def test_decoder_only_and_encoder_only_train(task):
  overrides = {"num_encoder_layers": 0} if task == "lm" else {"num_decoder_layers": 0}
  setup = training_helpers.make_setup(sharding.MeshConfig(), jax.devices()[:1], task=task,
                                      dropout_rate=0.0, **overrides)
  batch = training_helpers.make_batch(0, task=task)
  state = setup.init_state()
  losses = []
  for _ in range(5):
    state, metrics = setup.train_step(state, sharding.make_global_batch(batch, setup.mesh))
    losses.append(float(metrics["loss_sum"]) / float(metrics["weight_sum"]))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
  if task == "mlm":  # Only the chosen positions count.
    assert float(metrics["weight_sum"]) == float(batch["weights"].sum())
