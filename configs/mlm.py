"""Encoder-only masked language model (`EncoderOnly`, BERT-style) on English Multi30k.

  python train.py --config=configs/mlm.py --workdir=runs/mlm

15% of tokens are chosen for prediction (80% [MASK], 10% random, 10% kept); loss, accuracy and
perplexity are over those positions only. No BLEU; the best checkpoint has the lowest loss.
"""

from configs import multi30k


def get_config():
  config = multi30k.get_config()
  config.training.task = "mlm"
  config.data.source_lang = "en"
  config.data.target_lang = "de"
  config.model.num_encoder_layers = 3
  config.model.num_decoder_layers = 0
  config.training.label_smoothing = 0.0
  config.training.best_metric = "eval/loss"
  config.training.bleu_every_steps = 0
  return config
