"""Pure train and eval steps for the three model families of Vaswani et al. (2017).

`train_step(state, batch) -> (state, metrics)` and `eval_step(state, batch) -> metrics` are
pure and jit-able; static values (graphdef, optax transformation, task, ids) are bound with
`functools.partial` before `jax.jit` (done once, in `transformer.training.builder`).
Metrics are sums plus a denominator (`weight_sum`, the number of predicted tokens).
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from transformer import model as model_lib
from transformer.training import losses
from transformer.training import state as state_lib

# Task -> model family: "translation" (EncoderDecoder, also the synthetic copy tasks),
# "lm" (DecoderOnly, next-token prediction), "mlm" (EncoderOnly, masked-token prediction).
TASKS = ("translation", "lm", "mlm")


def forward(
    model: nnx.Module,
    batch: dict[str, jax.Array],
    *,
    task: str,
    bos_id: int,
    deterministic: bool,
    rngs: nnx.Rngs | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Runs the model on a batch and returns what the loss needs.

  Args:
    model: EncoderDecoder ("translation"), DecoderOnly ("lm") or EncoderOnly ("mlm").
    batch: int32 arrays following the contract's batch keys for the task.
    task: one of TASKS.
    bos_id: id put at the first decoder position of each segment by `shift_right`.
    deterministic: False enables dropout.
    rngs: `dropout` stream, required when not deterministic.

  Returns:
    (logits (B, T, V) float32, targets (B, T) int32, weights (B, T) float32).
  """
  targets = batch["targets"]
  if task == "translation":
    segmentation = batch.get("targets_segmentation")
    decoder_inputs = model_lib.shift_right(targets, bos_id, segmentation)
    logits = model(
        batch["inputs"],
        decoder_inputs,
        inputs_positions=batch.get("inputs_position"),
        decoder_positions=batch.get("targets_position"),
        inputs_segmentation=batch.get("inputs_segmentation"),
        decoder_segmentation=segmentation,
        deterministic=deterministic,
        rngs=rngs,
    )
    weights = _token_weights(targets, segmentation)
  elif task == "lm":
    segmentation = batch.get("targets_segmentation")
    logits = model(
        model_lib.shift_right(targets, bos_id, segmentation),
        positions=batch.get("targets_position"),
        segmentation=segmentation,
        deterministic=deterministic,
        rngs=rngs,
    )
    weights = _token_weights(targets, segmentation)
  elif task == "mlm":
    logits = model(
        batch["inputs"],
        positions=batch.get("inputs_position"),
        segmentation=batch.get("inputs_segmentation"),
        deterministic=deterministic,
        rngs=rngs,
    )
    weights = batch["weights"].astype(jnp.float32)
  else:
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")
  return logits, targets, weights


def _token_weights(targets: jax.Array, segmentation: jax.Array | None) -> jax.Array:
  """1.0 at real target tokens, 0.0 at padding."""
  if segmentation is not None:
    return (segmentation > 0).astype(jnp.float32)
  return (targets != 0).astype(jnp.float32)


def train_step(
    state: state_lib.TrainState,
    batch: dict[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    task: str,
    bos_id: int,
    label_smoothing: float,
) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
  """One optimizer step on the mean label-smoothed loss per target token of the global batch.

  Args:
    state: the current train state.
    batch: a global batch (see `forward`).
    graphdef: the model's NNX graph definition (static).
    tx: the optax transformation (static).
    task: one of TASKS (static).
    bos_id: BOS id for `shift_right` (static).
    label_smoothing: label smoothing mass (static; 0.1 in the paper).

  Returns:
    (new state, metric sums: loss_sum, nll_sum, accuracy_sum, weight_sum, grad_norm_sum,
    num_steps).
  """
  # Replaying the same (rng, step) pair gives the same dropout masks after a resume.
  dropout_key = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    model = nnx.merge(graphdef, params, state.model_state)
    logits, targets, weights = forward(
        model, batch, task=task, bos_id=bos_id, deterministic=False,
        rngs=nnx.Rngs(dropout=dropout_key),
    )
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
    task: str,
    bos_id: int,
    label_smoothing: float,
) -> dict[str, jax.Array]:
  """Metric sums of the deterministic model on one batch (no dropout, no update).

  Args:
    state: the train state (only params and model_state are read).
    batch: a global batch; all-padding rows contribute nothing.
    graphdef, task, bos_id, label_smoothing: as in `train_step` (static).

  Returns:
    Metric sums: loss_sum, nll_sum, accuracy_sum, weight_sum.
  """
  model = nnx.merge(graphdef, state.params, state.model_state)
  logits, targets, weights = forward(model, batch, task=task, bos_id=bos_id, deterministic=True)
  return losses.compute_metric_sums(logits, targets, weights, label_smoothing)
