"""The optimizer of Vaswani et al. (2017), section 5.3, built with optax, plus common options.

Adam (beta1 0.9, beta2 0.98, eps 1e-9) with the warm-up schedule; optionally AdamW, global-norm
gradient clipping and gradient accumulation (optax.MultiSteps).
"""

import dataclasses

import optax

from transformer.training import schedules


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Fields are exactly the keys of `config.optimizer` (see configs/default.py)."""

  name: str = "adam"  # "adam" (paper) or "adamw" (decoupled weight decay).
  schedule: str = "rsqrt"  # "rsqrt" (paper, eq. 3) or "cosine" (warm-up then cosine decay).
  learning_rate: float = 1.0  # rsqrt: factor on the paper's formula; cosine: peak rate.
  warmup_steps: int = 4000  # Linear warm-up steps (paper: 4000).
  b1: float = 0.9  # Adam beta1.
  b2: float = 0.98  # Adam beta2.
  eps: float = 1e-9  # Adam epsilon.
  weight_decay: float = 0.0  # AdamW decoupled weight decay; must be 0 for "adam".
  grad_clip_norm: float = 0.0  # Clip gradients to this global norm; 0 disables clipping.
  grad_accum_steps: int = 1  # Average gradients over this many steps before an update.

  def __post_init__(self):
    if self.name not in ("adam", "adamw"):
      raise ValueError(f"optimizer.name must be 'adam' or 'adamw', got {self.name!r}")
    if self.schedule not in ("rsqrt", "cosine"):
      raise ValueError(f"optimizer.schedule must be 'rsqrt' or 'cosine', got {self.schedule!r}")
    if self.name == "adam" and self.weight_decay:
      raise ValueError(
          f"optimizer.weight_decay={self.weight_decay} needs optimizer.name='adamw' "
          "(plain Adam would fold it into the gradient)"
      )
    if self.grad_accum_steps < 1:
      raise ValueError(f"optimizer.grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
    if self.grad_clip_norm < 0:
      raise ValueError(f"optimizer.grad_clip_norm must be >= 0, got {self.grad_clip_norm}")
    if self.warmup_steps < (1 if self.schedule == "rsqrt" else 0):
      raise ValueError(
          f"optimizer.warmup_steps must be >= {1 if self.schedule == 'rsqrt' else 0} with the "
          f"{self.schedule} schedule, got {self.warmup_steps}")
    if not self.learning_rate > 0:
      raise ValueError(f"optimizer.learning_rate must be > 0, got {self.learning_rate}")


def make_schedule(cfg: OptimizerConfig, d_model: int, num_train_steps: int) -> optax.Schedule:
  """Returns the learning-rate schedule as a function of the *update* count."""
  if cfg.schedule == "rsqrt":
    return schedules.make_rsqrt_schedule(d_model, cfg.warmup_steps, cfg.learning_rate)
  num_updates = max(num_train_steps // cfg.grad_accum_steps, cfg.warmup_steps + 1)
  return schedules.make_warmup_cosine_schedule(cfg.learning_rate, cfg.warmup_steps, num_updates)


def make_optimizer(
    cfg: OptimizerConfig, d_model: int, num_train_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optax transformation.

  Args:
    cfg: optimizer settings.
    d_model: model width D (the rsqrt schedule depends on it).
    num_train_steps: total training steps (micro-steps when accumulating); sets the cosine end.

  Returns:
    (tx, schedule): the transformation, and the schedule as a function of the update count.
  """
  schedule = make_schedule(cfg, d_model, num_train_steps)
  if cfg.name == "adam":
    opt = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  else:
    opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  if cfg.grad_clip_norm:
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), opt)
  if cfg.grad_accum_steps > 1:
    opt = optax.MultiSteps(opt, every_k_schedule=cfg.grad_accum_steps)
  return opt, schedule


def learning_rate_at(
    cfg: OptimizerConfig, schedule: optax.Schedule, step: int
) -> float:
  """The learning rate used by train step `step` (0-based), for logging."""
  return float(schedule(step // cfg.grad_accum_steps))
