"""Typed views of the `config.training` and `config.decoding` sections, and conversion of every
config section to its dataclass with errors that list the valid fields.
"""

import dataclasses
import difflib
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
  """Fields are exactly the keys of `config.training` (see configs/default.py)."""

  task: str = "translation"  # "translation", "lm" or "mlm".
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

  def __post_init__(self):
    for name in ("num_train_steps", "log_every_steps", "eval_every_steps",
                 "checkpoint_every_steps", "max_checkpoints_to_keep", "average_last_k"):
      if getattr(self, name) < 1:
        raise ValueError(f"training.{name} must be >= 1, got {getattr(self, name)}")
    for name in ("bleu_every_steps", "bleu_num_examples", "early_stopping_patience"):
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
    if self.best_metric == "eval/bleu" and self.task != "translation":
      raise ValueError(
          f"training.best_metric='eval/bleu' needs task 'translation' (task is {self.task!r}); "
          "use 'eval/loss'"
      )


@dataclasses.dataclass(frozen=True)
class DecodingConfig:
  """Fields are exactly the keys of `config.decoding` (see configs/default.py)."""

  beam_size: int = 4  # Beams K.
  length_penalty: float = 0.6  # Length-penalty exponent alpha.
  max_extra_length: int = 50  # Output may exceed the input length by this much.

  def __post_init__(self):
    if self.beam_size < 1:
      raise ValueError(f"decoding.beam_size must be >= 1, got {self.beam_size}")
    if self.max_extra_length < 1:
      raise ValueError(f"decoding.max_extra_length must be >= 1, got {self.max_extra_length}")


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
