"""The paper's base model on WMT'14 English->German (Vaswani et al., 2017, table 3, "base").

  python train.py --config=configs/wmt14_base.py --workdir=runs/wmt14_base

100k steps of ~25k source + ~25k target tokens, shared 37k BPE vocabulary, dropout 0.1,
checkpoints every 10 minutes in the paper (here every 1000 steps), test BLEU on newstest2014
with the average of the last 5 checkpoints, beam 4, alpha 0.6. Needs accelerators: the batch
is split over every device of the mesh.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = "wmt14_translate/de-en"
  config.data.source_lang = "en"
  config.data.target_lang = "de"
  config.data.vocab_size = 37000
  config.data.max_len = 256
  config.data.tokens_per_batch = 25000
  config.data.eval_batch_size = 256
  config.data.num_workers = 8

  config.model.max_len = 512
  config.training.num_train_steps = 100_000
  config.training.bleu_every_steps = 10_000
  config.training.average_last_k = 5
  config.training.max_checkpoints_to_keep = 5
  return config
