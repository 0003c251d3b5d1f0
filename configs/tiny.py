"""A seconds-long CPU smoke run of the default job (tests and notebooks).

  python train.py --config=configs/tiny.py --workdir=/tmp/tiny
"""

from configs import multi30k


def get_config():
  config = multi30k.get_config()
  config.data.vocab_size = 500
  config.data.max_len = 16
  config.data.tokens_per_batch = 512
  config.data.eval_batch_size = 32
  config.model.d_model = 32
  config.model.num_heads = 2
  config.model.d_ff = 64
  config.model.num_encoder_layers = 1
  config.model.num_decoder_layers = 1
  config.model.max_len = 64
  config.optimizer.warmup_steps = 20
  config.training.num_train_steps = 40
  config.training.log_every_steps = 10
  config.training.eval_every_steps = 20
  config.training.bleu_every_steps = 40
  config.training.bleu_num_examples = 32
  config.training.checkpoint_every_steps = 20
  config.decoding.beam_size = 2
  config.decoding.max_extra_length = 4
  return config
