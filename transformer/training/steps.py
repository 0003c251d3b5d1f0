"""Pure train and eval steps for the three model families of Vaswani et al. (2017).

`train_step(state, batch) -> (state, metrics)` and `eval_step(state, batch) -> metrics` are
pure and jit-able; static values (graphdef, optax transformation, task) are bound with
`functools.partial` before `jax.jit` (done once, in `transformer.training.builder`).
Metrics are sums plus a denominator (`weight_sum`, the number of predicted tokens).
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from transformer.training import losses
from transformer.training import state as state_lib
from transformer.training import tasks

def train_step(
    state: state_lib.TrainState,
    batch: dict[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    task: tasks.Task,
    label_smoothing: float,
) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
  """One optimizer step on the mean label-smoothed loss per target token of the global batch.

  Args:
    state: the current train state.
    batch: a global batch in `task.layout`.
    graphdef: the model's NNX graph definition (static).
    tx: the optax transformation (static).
    task: the model family (static): its `forward` gives logits, targets and weights.
    label_smoothing: label smoothing mass (static; 0.1 in the paper).

  Returns:
    (new state, metric sums: loss_sum, nll_sum, accuracy_sum, weight_sum, grad_norm_sum,
    num_steps).
  """
  # Replaying the same (rng, step) pair gives the same dropout masks after a resume.
  dropout_key = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    model = nnx.merge(graphdef, params, state.model_state)
    logits, targets, weights = task.forward(
        model, batch, deterministic=False, rngs=nnx.Rngs(dropout=dropout_key))
    # Metrics come from the same vocabulary reductions as the loss, inside the differentiated
    # function: only scalars leave it, so no (B, T, V) array outlives the backward pass.
    sums = losses.compute_metric_sums(logits, targets, weights, label_smoothing)
    # Mean per token (not per sequence), the usual normalization for translation.
    return sums["loss_sum"] / jnp.maximum(sums["weight_sum"], 1.0), sums

  grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics["grad_norm_sum"] = optax.tree.norm(grads)
  metrics["num_steps"] = jnp.ones((), jnp.float32)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, metrics


def eval_step(
    state: state_lib.TrainState,
    batch: dict[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    task: tasks.Task,
    label_smoothing: float,
) -> dict[str, jax.Array]:
  """Metric sums of the deterministic model on one batch (no dropout, no update).

  Args:
    state: a TrainState or InferenceState (only params and model_state are read).
    batch: a global batch; all-padding rows contribute nothing.
    graphdef, task, label_smoothing: as in `train_step` (static).

  Returns:
    Metric sums: loss_sum, nll_sum, accuracy_sum, weight_sum.
  """
  model = nnx.merge(graphdef, state.params, state.model_state)
  logits, targets, weights = task.forward(model, batch, deterministic=True)
  return losses.compute_metric_sums(logits, targets, weights, label_smoothing)
