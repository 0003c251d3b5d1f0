"""The learning-rate schedule (Vaswani et al., 2017, eq. 3) and the optimizer recipe."""

import jax.numpy as jnp
import numpy as np
import pytest

from transformer.training import optimizers
from transformer.training import schedules


@pytest.mark.parametrize("count", [0, 1, 99, 3999, 4000, 9999, 99999])
def test_rsqrt_schedule_equals_paper_formula(count):
  step = count + 1  # The paper counts steps from 1, optax from 0.
  expected = 512**-0.5 * min(step**-0.5, step * 4000**-1.5)
  np.testing.assert_allclose(
      float(schedules.make_rsqrt_schedule(512, 4000)(count)), expected, rtol=1e-6
  )


def test_rsqrt_schedule_hand_values():
  schedule = schedules.make_rsqrt_schedule(d_model=512, warmup_steps=4000, scale=2.0)
  # Peak at step 4000: 2 * 512^-0.5 * 4000^-0.5 = 2 / sqrt(2048000) = 1.3975e-3.
  np.testing.assert_allclose(float(schedule(3999)), 1.3975424859373686e-3, rtol=1e-6)
  # Step 1: 2 * 512^-0.5 * 4000^-1.5 = 3.4939e-7.
  np.testing.assert_allclose(float(schedule(0)), 3.4938562148434217e-07, rtol=1e-6)
  # Step 16000: decays as step^-0.5, half of the peak.
  np.testing.assert_allclose(float(schedule(15999)), 1.3975424859373686e-3 / 2, rtol=1e-6)


def test_rsqrt_schedule_rejects_bad_arguments():
  with pytest.raises(ValueError, match="warmup_steps"):
    schedules.make_rsqrt_schedule(512, 0)


def test_cosine_schedule_endpoints():
  schedule = schedules.make_warmup_cosine_schedule(1e-3, warmup_steps=10, decay_steps=110)
  # Update count c is step c + 1: linear warm-up 1e-4, 2e-4, ..., peak at step 10.
  np.testing.assert_allclose(float(schedule(0)), 1e-4, rtol=1e-5)
  np.testing.assert_allclose(float(schedule(9)), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(59)), 0.5e-3, rtol=1e-5)
  np.testing.assert_allclose(float(schedule(109)), 0.0, atol=1e-12)


def test_first_adam_update_uses_paper_hyperparameters():
  cfg = optimizers.OptimizerConfig(warmup_steps=4000)
  tx, schedule = optimizers.make_optimizer(cfg, d_model=512, num_train_steps=100)
  params = {"w": jnp.array([1.0, -2.0])}
  grads = {"w": jnp.array([0.5, -1e-12])}
  updates, _ = tx.update(grads, tx.init(params), params)
  # First Adam step with bias correction: -lr * g / (|g| + eps), eps = 1e-9.
  lr = float(schedule(0))
  expected = -lr * np.array([0.5 / (0.5 + 1e-9), -1e-12 / (1e-12 + 1e-9)])
  np.testing.assert_allclose(np.asarray(updates["w"]), expected, rtol=1e-5)
  assert (cfg.b1, cfg.b2, cfg.eps) == (0.9, 0.98, 1e-9)


def test_gradient_clipping_and_adamw_and_accumulation():
  params = {"w": jnp.ones(3)}
  cfg = optimizers.OptimizerConfig(name="adamw", weight_decay=0.1, grad_clip_norm=1.0,
                                   grad_accum_steps=2, schedule="cosine", learning_rate=1e-2,
                                   warmup_steps=1)
  tx, _ = optimizers.make_optimizer(cfg, d_model=8, num_train_steps=20)
  state = tx.init(params)
  first, state = tx.update({"w": jnp.full(3, 100.0)}, state, params)
  # Accumulation: no update until the second micro-step.
  np.testing.assert_array_equal(np.asarray(first["w"]), np.zeros(3))
  second, state = tx.update({"w": jnp.full(3, 100.0)}, state, params)
  assert np.all(np.asarray(second["w"]) < 0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="sgd"), "optimizer.name"),
    (dict(schedule="linear"), "optimizer.schedule"),
    (dict(weight_decay=0.1), "adamw"),
    (dict(grad_accum_steps=0), "grad_accum_steps"),
])
def test_optimizer_config_errors_name_the_field(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optimizers.OptimizerConfig(**kwargs)


def test_learning_rate_at_counts_updates_with_accumulation():
  cfg = optimizers.OptimizerConfig(grad_accum_steps=4, warmup_steps=10)
  _, schedule = optimizers.make_optimizer(cfg, d_model=64, num_train_steps=100)
  assert optimizers.learning_rate_at(cfg, schedule, 7) == float(schedule(1))


def test_gradient_accumulation_averages_micro_batch_gradients():
  params = {"w": jnp.array([1.0, 2.0])}
  g1, g2 = {"w": jnp.array([0.3, -0.1])}, {"w": jnp.array([0.1, 0.5])}
  plain, _ = optimizers.make_optimizer(optimizers.OptimizerConfig(warmup_steps=4), 64, 10)
  accumulating, _ = optimizers.make_optimizer(
      optimizers.OptimizerConfig(warmup_steps=4, grad_accum_steps=2), 64, 10)
  expected, _ = plain.update({"w": (g1["w"] + g2["w"]) / 2}, plain.init(params), params)
  state = accumulating.init(params)
  _, state = accumulating.update(g1, state, params)
  got, _ = accumulating.update(g2, state, params)
  np.testing.assert_allclose(np.asarray(got["w"]), np.asarray(expected["w"]), rtol=1e-6)
