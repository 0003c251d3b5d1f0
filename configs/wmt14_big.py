"""The paper's big model on WMT'14 English->German (Vaswani et al., 2017, table 3, "big").

  python train.py --config=configs/wmt14_big.py --workdir=runs/wmt14_big

D=1024, N=16, F=4096, dropout 0.3, 300k steps, last 20 checkpoints averaged. Use bf16 compute
(--config.model.dtype=bfloat16) and, if it does not fit one device, shard parameters:
--config.mesh.fsdp=-1 --config.mesh.data=1.
"""

from configs import wmt14_base


def get_config():
  config = wmt14_base.get_config()
  config.model.d_model = 1024
  config.model.num_heads = 16
  config.model.d_ff = 4096
  config.model.dropout_rate = 0.3
  config.training.num_train_steps = 300_000
  config.training.average_last_k = 20
  config.training.max_checkpoints_to_keep = 20
  return config
