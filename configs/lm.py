"""Decoder-only language model (`DecoderOnly`) on the English side of Multi30k.

  python train.py --config=configs/lm.py --workdir=runs/lm

Reports validation loss, accuracy and perplexity; no BLEU. The best checkpoint is the one
with the lowest validation loss.
"""

from configs import multi30k


def get_config():
  config = multi30k.get_config()
  config.training.task = "lm"
  config.data.source_lang = "en"  # Language models read the source side only.
  config.data.target_lang = "de"
  config.model.num_encoder_layers = 0
  config.model.num_decoder_layers = 3
  config.training.best_metric = "eval/loss"
  config.training.bleu_every_steps = 0
  return config
