"""The model families as Tasks: one value per family holds everything that differs between them.

A Task names its model class, the batch layout it reads from `transformer.data`, its forward
pass (batch -> logits, targets, weights for the loss), and whether it decodes (validation
BLEU, translation). Nothing else in the package branches on the family: the loop, the steps,
evaluation and the CLIs ask the Task. A new family is one more Task here (see README,
"Adding a model family").

  task = tasks.get_task("translation")
  model = task.model_class(model_config, rngs=nnx.Rngs(params=key))
  logits, targets, weights = task.forward(model, batch, deterministic=True)
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from transformer import data as data_lib
from transformer import model as model_lib

# (model, batch, *, deterministic, rngs) -> (logits (B, T, V) float32, targets (B, T) int32,
# weights (B, T) float32).
ForwardFn = Callable[..., tuple[jax.Array, jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Task:
  """A model family of the training program.

  Attributes:
    name: the value of `config.training.task`.
    model_class: built as `model_class(TransformerConfig, rngs=nnx.Rngs(params=key))`.
    layout: the batches it reads (`transformer.data.BatchLayout`).
    forward: `forward(model, batch, *, deterministic, rngs=None)` -> (logits, targets,
      weights); `rngs` carries the `dropout` stream when not deterministic.
    decodes: whether it translates sources into targets (validation BLEU, translate and
      evaluate's BLEU, `Translator`).
  """

  name: str
  model_class: type[nnx.Module]
  layout: data_lib.BatchLayout
  forward: ForwardFn
  decodes: bool


def _token_weights(targets: jax.Array, segmentation: jax.Array | None,
                   pad_id: int) -> jax.Array:
  """1.0 at real target tokens, 0.0 at padding."""
  if segmentation is not None:
    return (segmentation > 0).astype(jnp.float32)
  return (targets != pad_id).astype(jnp.float32)


def _translation_forward(model, batch, *, deterministic, rngs=None):
  """EncoderDecoder on (inputs, shift_right(targets)); the loss covers every target token."""
  targets = batch["targets"]
  segmentation = batch.get("targets_segmentation")
  decoder_inputs = model_lib.shift_right(targets, model.config.bos_id, segmentation)
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
  return logits, targets, _token_weights(targets, segmentation, model.config.pad_id)


def _lm_forward(model, batch, *, deterministic, rngs=None):
  """DecoderOnly on shift_right(targets): next-token prediction."""
  targets = batch["targets"]
  segmentation = batch.get("targets_segmentation")
  logits = model(
      model_lib.shift_right(targets, model.config.bos_id, segmentation),
      positions=batch.get("targets_position"),
      segmentation=segmentation,
      deterministic=deterministic,
      rngs=rngs,
  )
  return logits, targets, _token_weights(targets, segmentation, model.config.pad_id)


def _mlm_forward(model, batch, *, deterministic, rngs=None):
  """EncoderOnly on the corrupted inputs; the loss covers the chosen positions only."""
  logits = model(
      batch["inputs"],
      positions=batch.get("inputs_position"),
      segmentation=batch.get("inputs_segmentation"),
      deterministic=deterministic,
      rngs=rngs,
  )
  return logits, batch["targets"], batch["weights"].astype(jnp.float32)


TRANSLATION = Task(name="translation", model_class=model_lib.EncoderDecoder,
                   layout=data_lib.PAIRS, forward=_translation_forward, decodes=True)
LM = Task(name="lm", model_class=model_lib.DecoderOnly, layout=data_lib.TEXT,
          forward=_lm_forward, decodes=False)
MLM = Task(name="mlm", model_class=model_lib.EncoderOnly, layout=data_lib.MASKED_TEXT,
           forward=_mlm_forward, decodes=False)

TASKS = {task.name: task for task in (TRANSLATION, LM, MLM)}


def get_task(name: str) -> Task:
  """The Task called `name` (the value of `config.training.task`).

  Raises:
    ValueError: no such task (the message lists the valid names).
  """
  if name not in TASKS:
    raise ValueError(f"Unknown task {name!r}; training.task must be one of {tuple(TASKS)}.")
  return TASKS[name]
