"""Tokenizers: round trips, special ids where the model expects them, reuse from the workdir."""

import os

import pytest

from transformer import data
from transformer.data import sources
from transformer.data import tokenizer as tokenizer_lib


def test_special_ids_are_the_contract_values():
  assert (tokenizer_lib.PAD_ID, tokenizer_lib.UNK_ID, tokenizer_lib.BOS_ID, tokenizer_lib.EOS_ID,
          tokenizer_lib.MASK_ID) == (0, 1, 2, 3, 4)


def test_sentencepiece_special_pieces(multi30k_tokenizer):
  tok = multi30k_tokenizer
  assert tok.vocab_size == 8000
  assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 1, 2, 3, 4)
  pieces = [tok._sp.id_to_piece(i) for i in range(5)]
  assert pieces == ["<pad>", "<unk>", "<s>", "</s>", "[MASK]"]
  # Ordinary text never produces special ids other than UNK.
  ids = tok.encode("Ein Mann fährt Fahrrad.")
  assert ids and min(ids) >= tokenizer_lib.NUM_SPECIAL


def test_sentencepiece_round_trip(multi30k_config, multi30k_tokenizer):
  examples = sources.load_examples(multi30k_config, "validation").get(range(50))
  for source, target in examples:
    for text in (source, target):
      ids = multi30k_tokenizer.encode(text)
      assert multi30k_tokenizer.decode(ids + [tokenizer_lib.EOS_ID, 0, 0]) == text
  # Decoding stops at EOS and skips BOS / PAD.
  ids = multi30k_tokenizer.encode("Zwei Hunde spielen.")
  assert multi30k_tokenizer.decode([2] + ids + [3] + ids) == "Zwei Hunde spielen."


def test_tokenizer_is_stored_and_reused(multi30k_config, multi30k_tokenizer, multi30k_workdir):
  path = multi30k_workdir / data.pipeline.TOKENIZER_FILE
  assert path.exists()
  mtime = os.path.getmtime(path)
  again = data.get_tokenizer(multi30k_config, multi30k_workdir)
  assert os.path.getmtime(path) == mtime
  text = "Ein kleines Mädchen klettert."
  assert again.encode(text) == multi30k_tokenizer.encode(text)


def test_stored_tokenizer_with_other_vocab_size_is_an_error(multi30k_config, multi30k_tokenizer,
                                                           multi30k_workdir):
  other = data.DataConfig(**{**multi30k_config.__dict__, "vocab_size": 4000})
  with pytest.raises(ValueError, match="vocab_size=8000 but the config asks for 4000"):
    data.get_tokenizer(other, multi30k_workdir)


def test_trained_tokenizer_on_tsv(tmp_path):
  lines = [f"das ist satz {i}\tthis is sentence {i}" for i in range(200)]
  (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
  config = data.DataConfig(dataset=f"tsv:{tmp_path / 'train.tsv'}", vocab_size=60)
  tok = data.get_tokenizer(config, tmp_path / "wd")
  assert tok.vocab_size == 60
  assert tok.decode(tok.encode("this is sentence 17")) == "this is sentence 17"


def test_synthetic_tokenizer():
  tok = data.get_tokenizer(data.DataConfig(dataset="synthetic/copy", synthetic_vocab=10), "/none")
  assert isinstance(tok, data.SyntheticTokenizer)
  assert tok.vocab_size == 15
  assert tok.encode("0 9 3") == [5, 14, 8]
  assert tok.encode("10 x") == [tokenizer_lib.UNK_ID, tokenizer_lib.UNK_ID]
  assert tok.decode([5, 14, 8, 3, 7]) == "0 9 3"
