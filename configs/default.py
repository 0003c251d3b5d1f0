"""Every config key at its default. Other configs import this and override a few keys.

  python train.py --config=configs/default.py --workdir=runs/default
  python -c "from configs import default; print(default.get_config())"   # every key

This is the paper's base recipe (Vaswani et al., 2017) on Multi30k de->en; see
configs/multi30k.py for the CPU-sized default job and configs/wmt14_base.py for WMT'14.

Each default is defined once, as a field of the dataclass the section becomes, with a comment
saying what it means:
  config.model      transformer/model/config.py      TransformerConfig (the paper's base model;
                                                     vocabulary size and ids come from the
                                                     tokenizer)
  config.data       transformer/data/config.py       DataConfig
  config.optimizer  transformer/training/optimizers.py  OptimizerConfig (section 5.3)
  config.training   transformer/training/run_config.py  TrainingConfig
  config.mesh       transformer/sharding.py          MeshConfig (data, fsdp, tensor axes)
  config.decoding   transformer/training/run_config.py  DecodingConfig (section 6.1)
"""

import ml_collections

from transformer.training import run_config


def get_config() -> ml_collections.ConfigDict:
  return run_config.default_config()
