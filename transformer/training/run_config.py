"""The run config as typed sections (`parse_config`), the `config.training` and
`config.decoding` dataclasses, and conversion of every section with errors that list the valid
fields.
"""

import dataclasses
import difflib
import typing
from collections.abc import Mapping

import ml_collections
from ml_collections.config_dict import placeholder

from transformer import data as data_lib
from transformer import decoding as decoding_lib
from transformer import model as model_lib
from transformer import sharding
from transformer.training import builder
from transformer.training import errors
from transformer.training import optimizers
from transformer.training import tasks

CONFIG_SECTIONS = ("model", "data", "optimizer", "training", "mesh", "decoding")


def parse_profile_steps(text: str) -> tuple[int, int] | None:
  """The steps of `training.profile_steps`: "START,COUNT" -> (START, START + COUNT - 1).

  Raises:
    ValueError: naming the field and the expected form (also for a START or COUNT below 1).
  """
  if not isinstance(text, str):
    raise ValueError(f"training.profile_steps must be a string 'START,COUNT', got {text!r}")
  if not text.strip():
    return None
  parts = text.split(",")
  try:
    start, count = (int(p) for p in parts)
  except ValueError:
    start = count = None
  if start is None or start < 1 or count < 1:
    raise ValueError(
        "training.profile_steps must be 'START,COUNT' with integers START >= 1 (the global step "
        "number of the first traced step, as in metrics.jsonl) and COUNT >= 1, e.g. '20,5'; or "
        f"'' for no trace. Got {text!r}")
  return start, start + count - 1


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
  """Fields are exactly the keys of `config.training` (see configs/default.py)."""

  task: str = "translation"  # A name in transformer.training.tasks.TASKS.
  seed: int = 0  # Seed of parameter init and dropout.
  num_train_steps: int = 100_000  # Train steps.
  label_smoothing: float = 0.1  # Label smoothing epsilon_ls.
  log_every_steps: int = 100  # Train metrics cadence.
  eval_every_steps: int = 1000  # Validation loss / accuracy / perplexity cadence.
  bleu_every_steps: int = 5000  # Validation BLEU cadence (and at the last step); 0 = never.
  bleu_num_examples: int = 0  # Validation sentences decoded for BLEU; 0 = all.
  checkpoint_every_steps: int = 1000  # Checkpoint cadence.
  max_checkpoints_to_keep: int = 3  # Most recent checkpoints kept (plus the best).
  best_metric: str = "eval/bleu"  # Metric of the kept best checkpoint.
  early_stopping_patience: int = 0  # Stop after this many evaluations of best_metric without
  # improvement; 0 = never.
  async_checkpointing: bool = True  # Background checkpoint writes.
  average_last_k: int = 1  # Final test evaluation averages the last k checkpoints.
  test_split: str = "test"  # Split of the final evaluation; "" skips it.
  # "START,COUNT": a jax.profiler trace of steps START..START+COUNT-1 (global step numbers, as
  # in metrics.jsonl) written to tensorboard/ (the Profile tab); "" = no trace.
  profile_steps: str = ""
  num_logged_samples: int = 4  # Validation translations shown (TensorBoard text, W&B table) at
  # each BLEU evaluation; 0 = none.
  wandb_project: str = ""  # Also log to this Weights & Biases project (pip install wandb); "" =
  # TensorBoard and metrics.jsonl only.

  @property
  def profile_window(self) -> tuple[int, int] | None:
    """(first, last) step of `profile_steps`, both included; None when it is ""."""
    return parse_profile_steps(self.profile_steps)

  def __post_init__(self):
    tasks.get_task(self.task)
    parse_profile_steps(self.profile_steps)  # A malformed value fails here, at parse time.
    for name in ("num_train_steps", "log_every_steps", "eval_every_steps",
                 "checkpoint_every_steps", "max_checkpoints_to_keep", "average_last_k"):
      if getattr(self, name) < 1:
        raise ValueError(f"training.{name} must be >= 1, got {getattr(self, name)}")
    for name in ("bleu_every_steps", "bleu_num_examples", "early_stopping_patience",
                 "num_logged_samples"):
      if getattr(self, name) < 0:
        raise ValueError(f"training.{name} must be >= 0, got {getattr(self, name)}")
    if self.average_last_k > self.max_checkpoints_to_keep:
      raise ValueError(
          f"training.average_last_k={self.average_last_k} averages the last k checkpoints but "
          f"training.max_checkpoints_to_keep={self.max_checkpoints_to_keep} keeps fewer; raise "
          "max_checkpoints_to_keep to at least average_last_k"
      )
    if self.best_metric != "eval/bleu" and not self.best_metric.startswith("eval/"):
      raise ValueError(
          f"training.best_metric must be 'eval/bleu', 'eval/loss', 'eval/accuracy' or "
          f"'eval/perplexity', got {self.best_metric!r}"
      )
    if self.best_metric == "eval/bleu" and not tasks.get_task(self.task).decodes:
      raise ValueError(
          f"training.best_metric='eval/bleu' needs task 'translation' (task is {self.task!r}); "
          "use 'eval/loss'"
      )


@dataclasses.dataclass(frozen=True)
class DecodingConfig:
  """Fields are exactly the keys of `config.decoding` (see configs/default.py)."""

  beam_size: int = 4  # Beams K.
  length_penalty: float = 0.6  # Length-penalty exponent alpha.
  # Output may exceed the input length by this much.
  max_extra_length: int = decoding_lib.EXTRA_DECODE_LEN
  # Beam search stops when no live hypothesis can win: "exact" (the bound at the length
  # limit: what an unbounded search keeps) or "heuristic" (its score at its current length,
  # Hugging Face's default; faster).
  early_stopping: str = "exact"

  def __post_init__(self):
    if self.beam_size < 1:
      raise ValueError(f"decoding.beam_size must be >= 1, got {self.beam_size}")
    if self.max_extra_length < 1:
      raise ValueError(f"decoding.max_extra_length must be >= 1, got {self.max_extra_length}")
    if self.early_stopping not in decoding_lib.EARLY_STOPPING:
      raise ValueError(f"decoding.early_stopping must be one of {decoding_lib.EARLY_STOPPING}, "
                       f"got {self.early_stopping!r}")


def to_dataclass(cls, section: Mapping, name: str):
  """`cls(**section)`, with an error naming unknown or missing fields and listing valid ones."""
  valid = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(section) - set(valid))
  if unknown:
    hints = []
    for key in unknown:
      close = difflib.get_close_matches(key, valid, n=1)
      hints.append(f"{name}.{key}" + (f" (did you mean {name}.{close[0]}?)" if close else ""))
    raise ValueError(
        f"unknown config field(s): {', '.join(hints)}. Valid fields of config.{name}: "
        f"{', '.join(valid)}"
    )
  return cls(**dict(section))


def explain_unknown_field(config: Mapping, dotted: str) -> str | None:
  """Message for an unknown `--config.a.b.c` override: which part is wrong and what is valid.

  Args:
    config: the loaded config (nested mappings).
    dotted: the overridden path without the leading "config.", e.g. "training.num_step".

  Returns:
    None if the field exists, else a message listing the valid keys at the first unknown level.
  """
  node = config
  seen = ["config"]
  for part in dotted.split("."):
    if isinstance(node, Mapping) and part in node:
      node = node[part]
      seen.append(part)
      continue
    prefix = ".".join(seen)
    if not isinstance(node, Mapping):
      return f"--config.{dotted}: {prefix} is a value, not a section."
    valid = sorted(node.keys())
    close = difflib.get_close_matches(part, valid, n=1)
    hint = f" Did you mean {prefix}.{close[0]}?" if close else ""
    return (f"--config.{dotted}: {prefix} has no field {part!r}.{hint} "
            f"Valid fields of {prefix}: {', '.join(valid)}")
  return None


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """All config sections as typed objects (converted once, at the boundary)."""

  model: dict  # Fields of TransformerConfig (vocabulary and special ids come later).
  data: data_lib.DataConfig
  optimizer: optimizers.OptimizerConfig
  training: TrainingConfig
  mesh: sharding.MeshConfig
  decoding: DecodingConfig

  @property
  def task(self) -> tasks.Task:
    return tasks.get_task(self.training.task)


def _check_model_fields(model_fields: dict) -> None:
  """Validates config.model with a placeholder vocabulary (raises errors.UsageError)."""
  try:
    reserved = set(TOKENIZER_MODEL_FIELDS) & set(model_fields)
    if reserved:
      raise ValueError(
          f"config.model must not set {sorted(reserved)}: vocabulary size and special ids come "
          "from the tokenizer (set config.data.vocab_size instead)"
      )
    for name in ("d_model", "num_heads", "d_ff", "max_len"):
      value = model_fields.get(name)
      if name in model_fields and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    # The tokenizer is not known yet: the smallest vocabulary of the fixed special ids stands in.
    ids = data_lib.tokenizer
    builder.make_model_config(model_fields, vocab_size=ids.NUM_SPECIAL + 1, pad_id=ids.PAD_ID,
                              bos_id=ids.BOS_ID, eos_id=ids.EOS_ID)
  except TypeError as e:
    valid = [f.name for f in dataclasses.fields(model_lib.TransformerConfig)]
    raise errors.UsageError(
        f"config.model: {e}. Valid fields of config.model: {', '.join(valid)}") from e
  except ValueError as e:
    raise errors.UsageError(f"config.model: {e}") from e


def parse_config(config: ml_collections.ConfigDict | Mapping) -> RunConfig:
  """Converts a ConfigDict into typed sections; errors list the valid fields of a section.

  Raises:
    errors.UsageError: a missing or unknown section or field, or a bad value.
  """
  config = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  expected = set(CONFIG_SECTIONS)
  if set(config) != expected:
    raise errors.UsageError(
        f"config sections must be {sorted(expected)}; got {sorted(config)} "
        f"(unknown: {sorted(set(config) - expected)}, missing: {sorted(expected - set(config))})"
    )
  model_fields = dict(config["model"])
  _check_model_fields(model_fields)
  try:
    run = RunConfig(
        model=model_fields,
        data=to_dataclass(data_lib.DataConfig, config["data"], "data"),
        optimizer=to_dataclass(optimizers.OptimizerConfig, config["optimizer"], "optimizer"),
        training=to_dataclass(TrainingConfig, config["training"], "training"),
        mesh=to_dataclass(sharding.MeshConfig, config["mesh"], "mesh"),
        decoding=to_dataclass(DecodingConfig, config["decoding"], "decoding"),
    )
  except ValueError as e:
    raise errors.UsageError(str(e)) from e
  if run.model["max_len"] < run.data.max_len:
    raise errors.UsageError(
        f"model.max_len={run.model['max_len']} is smaller than data.max_len={run.data.max_len}: "
        "the model could not embed every position"
    )
  return run


# Model fields that come from the tokenizer, never from the config.
TOKENIZER_MODEL_FIELDS = ("vocab_size", "input_vocab_size", "pad_id", "bos_id", "eos_id")


def _section(cls, exclude: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
  """A config section holding the defaults of dataclass `cls` (None as an overridable
  placeholder of the field's type)."""
  section = ml_collections.ConfigDict()
  for field in dataclasses.fields(cls):
    if field.name in exclude:
      continue
    if field.default is None:
      types = [t for t in typing.get_args(field.type) if t is not type(None)]
      section[field.name] = placeholder(types[0])
    else:
      section[field.name] = field.default
  return section


def default_config() -> ml_collections.ConfigDict:
  """Every config key at its default: the paper's base model and recipe on Multi30k de->en.

  The defaults (and the meaning of each key, in a comment beside it) are the fields of
  `transformer.TransformerConfig` (config.model, less the ids and sizes that come from the
  tokenizer), `transformer.data.DataConfig`, `optimizers.OptimizerConfig`, `TrainingConfig`,
  `sharding.MeshConfig` and `DecodingConfig`; configs/default.py returns this.
  """
  config = ml_collections.ConfigDict()
  config.model = _section(model_lib.TransformerConfig, exclude=TOKENIZER_MODEL_FIELDS)
  config.data = _section(data_lib.DataConfig)
  config.optimizer = _section(optimizers.OptimizerConfig)
  config.training = _section(TrainingConfig)
  config.mesh = _section(sharding.MeshConfig)
  config.decoding = _section(DecodingConfig)
  return config
