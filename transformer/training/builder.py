"""Builds what a run needs once: the model of a Task, the optax transformation, a sharded
TrainState created under `jax.jit(out_shardings=...)`, and the jitted train and eval steps
(`make_train_setup`); or, for inference, the model and eval step alone (`make_model_setup`).

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
from transformer.training import tasks

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


def build_model(task: tasks.Task, model_config: model_lib.TransformerConfig,
                params_key: jax.Array) -> nnx.Module:
  """The model family of `task`, initialized from `params_key`."""
  return task.model_class(model_config, rngs=nnx.Rngs(params=params_key))


def _count_traces(fn, counts: collections.Counter, name: str):
  """Wraps `fn` so that each trace (compilation) increments counts[name]."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    counts[name] += 1
    return fn(*args, **kwargs)

  return wrapped


def _with_shardings(abstract, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract, shardings)


@dataclasses.dataclass(frozen=True)
class ModelSetup:
  """What evaluating and decoding a model need, built once by `make_model_setup`: no optimizer.

  Its functions take a TrainState or an InferenceState (only the parameters are read).
  """

  task: tasks.Task  # The model family.
  model_config: model_lib.TransformerConfig  # The resolved model hyperparameters.
  mesh: jax.sharding.Mesh  # The device mesh.
  graphdef: nnx.GraphDef  # Static NNX graph of the model.
  label_smoothing: float  # Of the evaluation loss.
  abstract_inference_state: state_lib.InferenceState  # ShapeDtypeStructs.
  inference_shardings: state_lib.InferenceState  # NamedShardings of the parameters.
  eval_jit: callable  # Jitted (InferenceState, batch) -> metric sums.
  trace_counts: collections.Counter  # Times each step function was traced.

  def eval_step(self, state, batch) -> dict:
    """Metric sums of the deterministic model on a global batch (`steps.eval_step`)."""
    return self.eval_jit(state_lib.inference_view(state), batch)

  def abstract_inference_state_with_shardings(self) -> state_lib.InferenceState:
    """Restore target of the parameters alone (inference)."""
    return _with_shardings(self.abstract_inference_state, self.inference_shardings)

  def model(self, state) -> nnx.Module:
    """The NNX model holding `state`'s parameters (for decoding on the host side)."""
    return nnx.merge(self.graphdef, state.params, state.model_state)


@dataclasses.dataclass(frozen=True)
class TrainSetup(ModelSetup):
  """A ModelSetup plus the optimizer, the sharded state initializer and the train step."""

  tx: optax.GradientTransformation  # The optimizer.
  schedule: optax.Schedule  # Learning rate as a function of the update count.
  abstract_state: state_lib.TrainState  # ShapeDtypeStructs of the state.
  state_shardings: state_lib.TrainState  # NamedShardings of the state.
  init_state: callable  # () -> TrainState, created sharded.
  train_step: callable  # Jitted (state, batch) -> (state, metrics); donates the state.

  def abstract_state_with_shardings(self) -> state_lib.TrainState:
    """ShapeDtypeStructs carrying this mesh's shardings (restore target)."""
    return _with_shardings(self.abstract_state, self.state_shardings)

  def abstract_state_with_optimizer(
      self, optimizer_config: optimizers.OptimizerConfig, num_train_steps: int
  ) -> state_lib.TrainState:
    """Like `abstract_state_with_shardings`, with the optimizer state of another optimizer
    config (the restore target of a checkpoint saved under that config)."""
    tx, _ = optimizers.make_optimizer(optimizer_config, self.model_config.d_model,
                                      num_train_steps)
    abstract = self.abstract_state.replace(
        opt_state=jax.eval_shape(tx.init, self.abstract_state.params))
    return _with_shardings(abstract, sharding.get_shardings(abstract, self.mesh))


def _model_parts(task: tasks.Task, model_config: model_lib.TransformerConfig,
                 mesh: jax.sharding.Mesh, label_smoothing: float) -> dict:
  """The fields of ModelSetup: graph, parameter shapes and shardings, jitted eval step."""
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"training.label_smoothing must be in [0, 1), got {label_smoothing}")
  # Shapes only: the key does not matter (parameters come from `init_state` or a checkpoint).
  abstract_model = nnx.eval_shape(
      lambda: build_model(task, model_config, jax.random.PRNGKey(0)))
  graphdef, params, model_state = state_lib.split_model(abstract_model)
  abstract = state_lib.InferenceState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                                      model_state=model_state)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract)
  shardings = sharding.get_shardings(abstract, mesh)
  trace_counts = collections.Counter()
  eval_jit = jax.jit(
      _count_traces(functools.partial(steps.eval_step, graphdef=graphdef, task=task,
                                      label_smoothing=label_smoothing), trace_counts, "eval"),
      in_shardings=(shardings, sharding.batch_sharding(mesh)),
      out_shardings=sharding.replicated(mesh),
  )
  return dict(task=task, model_config=model_config, mesh=mesh, graphdef=graphdef,
              label_smoothing=label_smoothing, abstract_inference_state=abstract,
              inference_shardings=shardings, eval_jit=eval_jit, trace_counts=trace_counts)


def make_model_setup(*, task: tasks.Task, model_config: model_lib.TransformerConfig,
                     mesh: jax.sharding.Mesh, label_smoothing: float = 0.0) -> ModelSetup:
  """The model graph, parameter shardings and jitted eval step, without an optimizer.

  Args:
    task: the model family.
    model_config: model hyperparameters (vocab size and special ids included).
    mesh: the device mesh; parameters are laid out by `transformer.sharding` rules.
    label_smoothing: of the evaluation loss (the run's training.label_smoothing).
  """
  return ModelSetup(**_model_parts(task, model_config, mesh, label_smoothing))


def make_train_setup(
    *,
    task: tasks.Task,
    model_config: model_lib.TransformerConfig,
    optimizer_config: optimizers.OptimizerConfig,
    num_train_steps: int,
    label_smoothing: float,
    seed: int,
    mesh: jax.sharding.Mesh,
) -> TrainSetup:
  """Creates the optimizer, the sharded state initializer and the jitted steps.

  Args:
    task: the model family.
    model_config: model hyperparameters (vocab size and special ids included).
    optimizer_config: optimizer settings.
    num_train_steps: total steps (for the cosine schedule).
    label_smoothing: label smoothing of the training and validation loss.
    seed: parameters come from fold_in(key(seed), 0), dropout from fold_in(key(seed), 1).
    mesh: the device mesh; parameters are laid out by `transformer.sharding` rules.

  Returns:
    The TrainSetup.
  """
  parts = _model_parts(task, model_config, mesh, label_smoothing)
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

  abstract_state = jax.eval_shape(init_fn)
  state_shardings = sharding.get_shardings(abstract_state, mesh)
  train_step = jax.jit(
      _count_traces(functools.partial(steps.train_step, graphdef=parts["graphdef"], tx=tx,
                                      task=task, label_smoothing=label_smoothing),
                    parts["trace_counts"], "train"),
      in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=0,
  )
  return TrainSetup(
      **parts,
      tx=tx,
      schedule=schedule,
      abstract_state=abstract_state,
      state_shardings=state_shardings,
      init_state=jax.jit(init_fn, out_shardings=state_shardings),
      train_step=train_step,
  )
