"""The Multi30k recipe of configs/multi30k.py in the other direction: English->German.

  python train.py --config=configs/multi30k_en_de.py --workdir=runs/multi30k_en_de
"""

from configs import multi30k


def get_config():
  config = multi30k.get_config()
  config.data.source_lang = "en"
  config.data.target_lang = "de"
  return config
