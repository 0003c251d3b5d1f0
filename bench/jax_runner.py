"""Our jitted train step for the benchmarks (`bench/train_step.py`, `bench/mfu.py`)."""

import functools
import time

import jax
import numpy as np
from flax import nnx

import common
from transformer import model as model_lib
from transformer.training import optimizers
from transformer.training import state as state_lib
from transformer.training import steps
from transformer.training import tasks


def model_config(shape: dict, *, dtype: str = "float32",
                 attention_impl: str = "xla") -> model_lib.TransformerConfig:
  """The post-LN, ReLU, tied-embedding `TransformerConfig` of a `common.CONFIGS` entry."""
  return model_lib.TransformerConfig(
      vocab_size=shape["vocab"], d_model=shape["d_model"], num_heads=shape["heads"],
      d_ff=shape["d_ff"], num_encoder_layers=shape["layers"], num_decoder_layers=shape["layers"],
      dropout_rate=0.1, max_len=max(shape["src"], shape["tgt"]), dtype=dtype,
      attention_impl=attention_impl)


class JaxRunner:
  """Our step: `steps.train_step` + `optimizers.make_optimizer` (paper Adam), jitted once.

  The state is donated and the batch is placed on the device before the loop (as the training
  loop's prefetching does). Every call goes through the same `jax.jit` object, whose Python
  body increments `traces` when (and only when) it is traced. A trace count of 1 is not proof
  enough: JAX also compiles again, without tracing, when an argument's placement changes (an
  uncommitted initial state against the committed state the step returns did exactly that), so
  `backend_compiles` counts every XLA compilation in the process as well (JAX's monitoring
  events); it must not grow during the timed steps.
  """

  def __init__(self, shape: dict, *, dtype: str = "float32", attention_impl: str = "xla",
               device: jax.Device | None = None):
    """Builds the model, Adam state and batch of `shape` on `device` (default: the first)."""
    self.device = device or jax.devices()[0]
    self.shape = shape
    self.config = model_config(shape, dtype=dtype, attention_impl=attention_impl)
    with jax.default_device(self.device):
      model = model_lib.EncoderDecoder(self.config, rngs=nnx.Rngs(params=0))
      graphdef, params, model_state = state_lib.split_model(model)
      tx, _ = optimizers.make_optimizer(optimizers.OptimizerConfig(), shape["d_model"], 1000)
      state = state_lib.TrainState(
          step=jax.numpy.zeros((), jax.numpy.int32), params=params, model_state=model_state,
          opt_state=tx.init(params), rng=jax.random.PRNGKey(1))
    # Committed to the device like the state every step returns, so both match one executable.
    self.state = jax.device_put(state, self.device)
    self.backend_compiles = 0
    jax.monitoring.register_event_duration_secs_listener(self._count_compiles)
    self.graphdef = graphdef
    self.traces = 0
    step_fn = functools.partial(steps.train_step, graphdef=graphdef, tx=tx,
                                task=tasks.TRANSLATION, label_smoothing=0.1)

    def counted(state, batch):
      self.traces += 1  # Runs at trace time only.
      return step_fn(state, batch)

    self.step_fn = jax.jit(counted, donate_argnums=0)
    self.batch = self.put(common.make_batch(shape))
    self.compiled = None
    self.metrics = None

  def _count_compiles(self, event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      self.backend_compiles += 1

  def close(self) -> None:
    """Stops counting compilations (unregisters the monitoring listener)."""
    jax.monitoring.unregister_event_duration_listener(self._count_compiles)

  def put(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Copies a numpy batch to the device."""
    return jax.device_put(batch, self.device)

  def compile(self) -> float:
    """Traces and compiles the step ahead of time; returns seconds.

    The later calls go through the same jitted function, which finds this compilation in
    JAX's cache instead of tracing again (the trace counter stays at 1).
    """
    start = time.perf_counter()
    self.compiled = self.step_fn.lower(self.state, self.batch).compile()
    return time.perf_counter() - start

  def memory_analysis(self):
    """XLA's buffer statistics of the compiled step (argument, output, temp bytes)."""
    return self.compiled.memory_analysis()

  def step(self, batch: dict[str, jax.Array] | None = None) -> None:
    """Dispatches one step (asynchronously) on `batch` or the runner's own batch."""
    self.state, self.metrics = self.step_fn(self.state, self.batch if batch is None else batch)

  def sync(self) -> float:
    """Waits for the last step; returns its mean loss (one device-to-host transfer)."""
    return float(self.metrics["loss_sum"] / self.metrics["weight_sum"])
