"""Builds what a run needs once: the model family, the optax transformation, a sharded
TrainState created under `jax.jit(out_shardings=...)`, and the jitted train and eval steps.

Each step is jitted exactly once here with explicit in/out shardings and the state donated
(maxtext `get_functional_train_with_signature`); trace counts are recorded for tests.
"""

import collections
import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from transformer import model as model_lib
from transformer import sharding
from transformer.training import optimizers
from transformer.training import state as state_lib
from transformer.training import steps

MODEL_CLASSES = {
    "translation": model_lib.EncoderDecoder,
    "lm": model_lib.DecoderOnly,
    "mlm": model_lib.EncoderOnly,
}


def check_task(task: str) -> None:
  if task not in MODEL_CLASSES:
    raise ValueError(f"training.task must be one of {tuple(MODEL_CLASSES)}, got {task!r}")


def make_model_config(
    model_fields: dict, *, vocab_size: int, pad_id: int, bos_id: int, eos_id: int,
    input_vocab_size: int | None = None,
) -> model_lib.TransformerConfig:
  """`TransformerConfig(**config.model)` plus the tokenizer's vocabulary sizes and special ids.

  `input_vocab_size` is the source vocabulary size when it differs (imported Marian models with
  separate vocabularies); equal to `vocab_size` or None means one size.
  """
  if input_vocab_size == vocab_size:
    input_vocab_size = None
  return model_lib.TransformerConfig(
      **model_fields, vocab_size=vocab_size, pad_id=pad_id, bos_id=bos_id, eos_id=eos_id,
      input_vocab_size=input_vocab_size,
  )


def build_model(task: str, model_config: model_lib.TransformerConfig, params_key: jax.Array):
  """The model family of `task`, initialized from `params_key`."""
  check_task(task)
  return MODEL_CLASSES[task](model_config, rngs=nnx.Rngs(params=params_key))


def _count_traces(fn, counts: collections.Counter, name: str):
  """Wraps `fn` so that each trace (compilation) increments counts[name]."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    counts[name] += 1
    return fn(*args, **kwargs)

  return wrapped


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """Everything static about a run, built once by `make_train_setup`."""

  task: str  # "translation", "lm" or "mlm".
  model_config: model_lib.TransformerConfig  # The resolved model hyperparameters.
  mesh: jax.sharding.Mesh  # The device mesh.
  graphdef: nnx.GraphDef  # Static NNX graph of the model.
  tx: optax.GradientTransformation  # The optimizer.
  schedule: optax.Schedule  # Learning rate as a function of the update count.
  abstract_state: state_lib.TrainState  # ShapeDtypeStructs of the state.
  state_shardings: state_lib.TrainState  # NamedShardings of the state.
  init_state: callable  # () -> TrainState, created sharded.
  train_step: callable  # Jitted (state, batch) -> (state, metrics); donates the state.
  eval_step: callable  # Jitted (state, batch) -> metrics.
  trace_counts: collections.Counter  # Times each step function was traced.

  def abstract_state_with_shardings(self) -> state_lib.TrainState:
    """ShapeDtypeStructs carrying this mesh's shardings (restore target)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        self.abstract_state, self.state_shardings,
    )

  def abstract_state_with_optimizer(
      self, optimizer_config: optimizers.OptimizerConfig, num_train_steps: int
  ) -> state_lib.TrainState:
    """Like `abstract_state_with_shardings`, with the optimizer state of another optimizer
    config (the restore target of a checkpoint saved under that config)."""
    tx, _ = optimizers.make_optimizer(optimizer_config, self.model_config.d_model,
                                      num_train_steps)
    abstract = self.abstract_state.replace(
        opt_state=jax.eval_shape(tx.init, self.abstract_state.params))
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract, sharding.get_shardings(abstract, self.mesh),
    )

  def model(self, state: state_lib.TrainState) -> nnx.Module:
    """The NNX model holding `state`'s parameters (for decoding on the host side)."""
    return nnx.merge(self.graphdef, state.params, state.model_state)


def make_train_setup(
    *,
    task: str,
    model_config: model_lib.TransformerConfig,
    optimizer_config: optimizers.OptimizerConfig,
    num_train_steps: int,
    label_smoothing: float,
    seed: int,
    mesh: jax.sharding.Mesh,
) -> TrainSetup:
  """Creates the optimizer, the sharded state initializer and the jitted steps.

  Args:
    task: "translation", "lm" or "mlm".
    model_config: model hyperparameters (vocab size and special ids included).
    optimizer_config: optimizer settings.
    num_train_steps: total steps (for the cosine schedule).
    label_smoothing: label smoothing of the training and validation loss.
    seed: parameters come from fold_in(key(seed), 0), dropout from fold_in(key(seed), 1).
    mesh: the device mesh; parameters are laid out by `transformer.sharding` rules.

  Returns:
    The TrainSetup.
  """
  check_task(task)
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"training.label_smoothing must be in [0, 1), got {label_smoothing}")
  tx, schedule = optimizers.make_optimizer(optimizer_config, model_config.d_model, num_train_steps)
  base_key = jax.random.PRNGKey(seed)

  def init_fn():
    model = build_model(task, model_config, jax.random.fold_in(base_key, 0))
    _, params, model_state = state_lib.split_model(model)
    return state_lib.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=tx.init(params),
        rng=jax.random.fold_in(base_key, 1),
    )

  abstract_model = nnx.eval_shape(
      lambda: build_model(task, model_config, jax.random.fold_in(base_key, 0))
  )
  graphdef, _, _ = state_lib.split_model(abstract_model)
  abstract_state = jax.eval_shape(init_fn)
  state_shardings = sharding.get_shardings(abstract_state, mesh)
  replicated = sharding.replicated(mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  trace_counts = collections.Counter()
  static = dict(graphdef=graphdef, task=task, bos_id=model_config.bos_id,
                label_smoothing=label_smoothing)
  train_step = jax.jit(
      _count_traces(functools.partial(steps.train_step, tx=tx, **static), trace_counts, "train"),
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=(state_shardings, replicated),
      donate_argnums=0,
  )
  eval_step = jax.jit(
      _count_traces(functools.partial(steps.eval_step, **static), trace_counts, "eval"),
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=replicated,
  )
  return TrainSetup(
      task=task,
      model_config=model_config,
      mesh=mesh,
      graphdef=graphdef,
      tx=tx,
      schedule=schedule,
      abstract_state=abstract_state,
      state_shardings=state_shardings,
      init_state=jax.jit(init_fn, out_shardings=state_shardings),
      train_step=train_step,
      eval_step=eval_step,
      trace_counts=trace_counts,
  )
