"""Shared pieces of the training tests: tiny models, meshes and batches (imported by tests)."""

import importlib
import os
import sys

import numpy as np

from transformer import model as model_lib
from transformer import sharding
from transformer.training import builder
from transformer.training import optimizers
from transformer.training import tasks


def make_setup(mesh_config: sharding.MeshConfig, devices=None, *, task="translation",
               dropout_rate=0.1, dtype="float32", grad_accum_steps=1, eps=1e-9,
               **model_overrides):
  """A TrainSetup of a 1+1-layer, width-32 model with vocabulary 32 on the given mesh."""
  model_config = model_lib.TransformerConfig.tiny(
      vocab_size=32, dropout_rate=dropout_rate, dtype=dtype,
      **({"num_encoder_layers": 1, "num_decoder_layers": 1} | model_overrides),
  )
  return builder.make_train_setup(
      task=tasks.get_task(task), model_config=model_config,
      optimizer_config=optimizers.OptimizerConfig(warmup_steps=10, eps=eps,
                                                  grad_accum_steps=grad_accum_steps),
      num_train_steps=100, label_smoothing=0.1, seed=0,
      mesh=sharding.make_mesh(mesh_config, devices),
  )


def make_batch(seed: int, rows: int = 8, length: int = 12, task: str = "translation"):
  """A translation batch (copy task: targets = inputs) with some padding, numpy int32."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, length + 1, rows)
  tokens = rng.integers(5, 32, (rows, length)).astype(np.int32)
  segmentation = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  tokens = tokens * segmentation
  positions = np.where(segmentation > 0, np.arange(length)[None], 0).astype(np.int32)
  if task == "lm":
    return {"targets": tokens, "targets_position": positions,
            "targets_segmentation": segmentation}
  if task == "mlm":
    weights = (rng.random((rows, length)) < 0.3) * segmentation
    corrupted = np.where(weights > 0, 4, tokens).astype(np.int32)  # MASK_ID = 4.
    return {"inputs": corrupted, "inputs_position": positions,
            "inputs_segmentation": segmentation, "targets": tokens,
            "weights": weights.astype(np.float32)}
  return {"inputs": tokens, "inputs_position": positions, "inputs_segmentation": segmentation,
          "targets": tokens, "targets_position": positions,
          "targets_segmentation": segmentation}


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MULTI30K_DIR = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data", "multi30k")


def load_config(name: str):
  """configs/<name>.py's get_config() (configs import each other as the `configs` package)."""
  if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
  return importlib.import_module(f"configs.{name}").get_config()


def tiny_copy_config(num_train_steps: int = 20):
  """The copy task with a 1+1-layer width-32 model on one device, for fast loop tests."""
  config = load_config("copy")
  config.model.d_model = 32
  config.model.d_ff = 64
  config.model.num_encoder_layers = 1
  config.model.num_decoder_layers = 1
  config.mesh.data = 1
  config.data.tokens_per_batch = 256
  config.data.eval_batch_size = 32
  config.training.num_train_steps = num_train_steps
  config.training.log_every_steps = 5
  config.training.eval_every_steps = 1000  # Only at the last step.
  config.training.bleu_every_steps = 0
  config.training.checkpoint_every_steps = 5
  config.training.test_split = ""
  return config
