"""Tokenizers: a SentencePiece vocabulary shared by source and target (Vaswani et al., 2017, 5.1).

The special token ids of the whole project are defined here, once.
"""

from collections.abc import Iterable, Iterator, Sequence
import hashlib
import io
import os
import tempfile

import sentencepiece as spm

PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3
MASK_ID = 4  # A SentencePiece user-defined symbol, used by masked-LM corruption.
NUM_SPECIAL = 5  # Ids below this are special; ordinary tokens start here.
MASK_PIECE = "[MASK]"


class Tokenizer:
  """Common interface of all tokenizers: special ids, `encode`, `decode`, `vocab_size`."""

  pad_id = PAD_ID
  unk_id = UNK_ID
  bos_id = BOS_ID
  eos_id = EOS_ID
  mask_id = MASK_ID

  @property
  def vocab_size(self) -> int:
    """Number of ids, special ids included (the model's embedding size V)."""
    raise NotImplementedError

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without BOS or EOS."""
    return self.encode_batch([text])[0]

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without BOS or EOS."""
    raise NotImplementedError

  def fingerprint(self) -> str:
    """A short string that differs between tokenizers that encode differently."""
    raise NotImplementedError

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`: stops at the first EOS, skips PAD and BOS."""
    kept = []
    for i in ids:
      i = int(i)
      if i == EOS_ID:
        break
      if i not in (PAD_ID, BOS_ID):
        kept.append(i)
    return self._decode_ids(kept)

  def _decode_ids(self, ids: list[int]) -> str:
    raise NotImplementedError


class SentencePieceTokenizer(Tokenizer):
  """A trained SentencePiece model; picklable (grain worker processes receive copies)."""

  def __init__(self, model_proto: bytes):
    self._proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    expected = {PAD_ID: "<pad>", UNK_ID: "<unk>", BOS_ID: "<s>", EOS_ID: "</s>",
                MASK_ID: MASK_PIECE}
    for i, piece in expected.items():
      if self._sp.id_to_piece(i) != piece:
        raise ValueError(f"SentencePiece model has {self._sp.id_to_piece(i)!r} at id {i}, "
                         f"expected {piece!r}; it was not trained by train_sentencepiece.")

  @classmethod
  def load(cls, path: str | os.PathLike) -> "SentencePieceTokenizer":
    """Loads a model file written by `train_sentencepiece`."""
    with open(path, "rb") as f:
      return cls(f.read())

  def __getstate__(self):
    return {"proto": self._proto}

  def __setstate__(self, state):
    self.__init__(state["proto"])

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def fingerprint(self) -> str:
    return "spm-" + hashlib.sha256(self._proto).hexdigest()[:16]

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._sp.encode(list(texts), out_type=int)

  def _decode_ids(self, ids: list[int]) -> str:
    return self._sp.decode(ids)


class SyntheticTokenizer(Tokenizer):
  """Tokenizer of the synthetic tasks: text is space-separated symbols "0".."num_symbols-1"."""

  def __init__(self, num_symbols: int):
    self.num_symbols = num_symbols

  @property
  def vocab_size(self) -> int:
    return NUM_SPECIAL + self.num_symbols

  def fingerprint(self) -> str:
    return f"synthetic-{self.num_symbols}"

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    out = []
    for text in texts:
      ids = []
      for word in text.split():
        symbol = int(word) if word.isdigit() else -1
        ids.append(NUM_SPECIAL + symbol if 0 <= symbol < self.num_symbols else UNK_ID)
      out.append(ids)
    return out

  def _decode_ids(self, ids: list[int]) -> str:
    return " ".join(str(i - NUM_SPECIAL) if i >= NUM_SPECIAL else "<unk>" for i in ids)


def train_sentencepiece(texts: Iterator[str], path: str | os.PathLike, vocab_size: int,
                        *, max_sentences: int = 2_000_000,
                        seed: int = 0) -> SentencePieceTokenizer:
  """Trains a BPE SentencePiece model on `texts` and writes it atomically to `path`.

  Args:
    texts: training sentences (source and target sides together, for a shared vocabulary).
    path: model file to write.
    vocab_size: number of ids, special ids included.
    max_sentences: SentencePiece samples at most this many sentences (keeps WMT training fast).
    seed: seed of that sampling, so that every process of a run trains the same model.

  Returns:
    The trained tokenizer.
  """
  model = io.BytesIO()
  spm.set_random_generator_seed(seed)  # SentencePiece only has a library-wide seed.
  try:
    spm.SentencePieceTrainer.train(
      sentence_iterator=texts, model_writer=model, vocab_size=vocab_size, model_type="bpe",
      pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
      user_defined_symbols=[MASK_PIECE], character_coverage=1.0,
      input_sentence_size=max_sentences, shuffle_input_sentence=True, num_threads=os.cpu_count(),
      minloglevel=2)
  except RuntimeError as e:
    raise ValueError(f"SentencePiece training with vocab_size={vocab_size} failed: {e}") from e
  tokenizer = SentencePieceTokenizer(model.getvalue())
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  # Write then rename, so that a concurrent reader (another process) never sees half a file.
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
  with os.fdopen(fd, "wb") as f:
    f.write(model.getvalue())
  os.replace(tmp, path)
  return tokenizer
