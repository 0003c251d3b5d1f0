"""The default job: a small Transformer on Multi30k German->English, sized for a laptop CPU.

  python train.py --workdir=runs/multi30k                 # same as --config=configs/multi30k.py

On 2 CPU cores validation BLEU starts rising within about ten minutes. On a GPU, train the
paper's base model on the same data instead (not yet measured in this repository):

  python train.py --workdir=runs/multi30k_base --config.model.d_model=512 \
    --config.model.num_heads=8 --config.model.d_ff=2048 --config.model.num_encoder_layers=6 \
    --config.model.num_decoder_layers=6 --config.model.dropout_rate=0.3 \
    --config.data.tokens_per_batch=16384 --config.optimizer.warmup_steps=4000 \
    --config.training.num_train_steps=20000 --config.training.bleu_every_steps=2000

The raw Multi30k files are read from ../shared/data/multi30k next to this repository when that
directory exists, otherwise downloaded from github.com/multi30k/dataset by tfds; override with
--config.data.manual_dir=DIR.
"""

import os

from configs import default

# ../shared/data/multi30k relative to the repository root (offline copy, when present).
_LOCAL_MULTI30K = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                 "multi30k")
)


def get_config():
  config = default.get_config()
  if os.path.isdir(_LOCAL_MULTI30K):
    config.data.manual_dir = _LOCAL_MULTI30K
  config.data.vocab_size = 4000
  config.data.max_len = 48
  config.data.tokens_per_batch = 2048

  config.model.d_model = 128
  config.model.num_heads = 4
  config.model.d_ff = 512
  config.model.num_encoder_layers = 3
  config.model.num_decoder_layers = 3
  config.model.max_len = 128
  config.model.dropout_rate = 0.1  # See the README: 0.3 learned 2x slower in this budget.

  # Small model, short run: a shorter warm-up (peak rate 1.0 * 128^-0.5 * 800^-0.5 = 3.1e-3).
  config.optimizer.warmup_steps = 800
  config.optimizer.learning_rate = 1.0

  config.training.num_train_steps = 6000
  config.training.log_every_steps = 50
  config.training.eval_every_steps = 250
  # Validation BLEU on all 1,014 sentences every 500 steps picks the best checkpoint and stops
  # the run after 4 evaluations without improvement; the test split is then translated with
  # the parameters of the last 5 checkpoints averaged.
  config.training.bleu_every_steps = 500
  config.training.bleu_num_examples = 0
  config.training.checkpoint_every_steps = 500
  config.training.max_checkpoints_to_keep = 5
  config.training.early_stopping_patience = 4
  config.training.average_last_k = 5
  return config
