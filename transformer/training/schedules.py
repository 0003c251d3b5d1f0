"""Learning-rate schedules: the inverse-square-root warm-up of Vaswani et al. (2017), eq. (3).

Optax counts updates from 0; the paper counts steps from 1, so every schedule here evaluates
the paper's formula at `count + 1`.
"""

import jax.numpy as jnp
import optax


def make_rsqrt_schedule(d_model: int, warmup_steps: int, scale: float = 1.0) -> optax.Schedule:
  """The paper's schedule: lr = scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5).

  Args:
    d_model: model width D; the peak learning rate falls as D grows.
    warmup_steps: steps of linear warm-up (4000 in the paper).
    scale: constant factor on the whole schedule (1.0 in the paper).

  Returns:
    An optax schedule mapping the update count (int, from 0) to a float32 learning rate.
  """
  if d_model <= 0 or warmup_steps <= 0:
    raise ValueError(f"d_model and warmup_steps must be positive, got {d_model}, {warmup_steps}")

  def schedule(count):
    step = jnp.asarray(count, jnp.float32) + 1.0
    return scale * d_model**-0.5 * jnp.minimum(step**-0.5, step * warmup_steps**-1.5)

  return schedule


def make_warmup_cosine_schedule(
    peak_learning_rate: float, warmup_steps: int, decay_steps: int
) -> optax.Schedule:
  """Linear warm-up to `peak_learning_rate`, then cosine decay to 0 at `decay_steps`.

  Args:
    peak_learning_rate: learning rate reached at the end of warm-up.
    warmup_steps: steps of linear warm-up.
    decay_steps: total steps (warm-up included) at which the learning rate reaches 0.

  Returns:
    An optax schedule of the update count (from 0): update 0 is step 1 of the warm-up.
  """
  if decay_steps <= warmup_steps:
    raise ValueError(
        f"decay_steps ({decay_steps}) must exceed warmup_steps ({warmup_steps}) for cosine decay"
    )
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=peak_learning_rate,
      warmup_steps=warmup_steps,
      decay_steps=decay_steps,
      end_value=0.0,
  )
  return lambda count: schedule(count + 1)
