"""Tokenizers: a SentencePiece vocabulary shared by source and target (Vaswani et al., 2017, 5.1),
and the two SentencePiece models plus id map of a Marian (opus-mt) model.

The special token ids of the whole project are defined here, once.
"""

from collections.abc import Iterable, Iterator, Mapping, Sequence
import hashlib
import io
import json
import os

import numpy as np

import sentencepiece as spm

from transformer import storage

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

  @property
  def source_vocab_size(self) -> int:
    """Number of source ids; differs from `vocab_size` only for separate vocabularies."""
    return self.vocab_size

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without BOS or EOS."""
    return self.encode_batch([text])[0]

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each (source) text, without BOS or EOS."""
    raise NotImplementedError

  def encode_target_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each target text; the source tokenization unless the sides differ."""
    return self.encode_batch(texts)

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
    """Loads a model file written by `train_sentencepiece` (a local path or gs://)."""
    return cls(storage.read_bytes(os.fspath(path)))

  def __getstate__(self):
    return {"proto": self._proto}

  def __setstate__(self, state):
    self.__init__(state["proto"])

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def model_proto(self) -> bytes:
    """The serialized SentencePiece model."""
    return self._proto

  def id_to_piece(self, token_id: int) -> str:
    """The piece of `token_id`."""
    return self._sp.id_to_piece(int(token_id))

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
  # Whole or not at all, so that a concurrent reader (another process) never sees half a file.
  storage.write_atomic(os.fspath(path), model.getvalue())
  return tokenizer


MARIAN_DIR = "marian_tokenizer"  # Where a workdir keeps a Marian model's tokenizer files.
_MARIAN_IDS_FILE = "ids.json"


def marian_id_map(vocab_size: int, *, pad_id: int, unk_id: int, eos_id: int,
                  start_id: int) -> np.ndarray:
  """Our id -> Marian id, for one side of a Marian vocabulary.

  Ours: PAD_ID, UNK_ID, BOS_ID, EOS_ID, then every other Marian id in increasing order from
  id 4. BOS is Marian's decoder start token (its PAD), so it appears twice.

  Args:
    vocab_size: Marian's V (rows of its embedding).
    pad_id, unk_id, eos_id: Marian's special ids.
    start_id: Marian's `decoder_start_token_id`.

  Returns:
    int64 (V + 1,): entry j is the Marian id of our id j.
  """
  special = {pad_id, unk_id, eos_id}
  ordinary = [m for m in range(vocab_size) if m not in special]
  return np.array([pad_id, unk_id, start_id, eos_id] + ordinary, np.int64)


class MarianTokenizer(Tokenizer):
  """A Marian model's tokenizer (`transformers.MarianTokenizer`), with our special ids.

  Source text goes through `source.spm`, target text through `target.spm`; pieces become Marian
  ids through `vocab.json` (and `target_vocab.json` for separate vocabularies), then our ids
  through `marian_id_map`. A leading language code such as ">>fra<<" stays one token.
  """

  def __init__(self, files: Mapping[str, bytes]):
    """Builds the tokenizer from the bytes of the files `save` writes (see `load`)."""
    self._files = dict(files)
    info = json.loads(files[_MARIAN_IDS_FILE])
    self._info = info
    self._sp_source = spm.SentencePieceProcessor(model_proto=files["source.spm"])
    self._sp_target = spm.SentencePieceProcessor(model_proto=files["target.spm"])
    self.separate_vocabs = "target_vocab.json" in files
    self._source_vocab = json.loads(files["vocab.json"])
    self._target_vocab = (json.loads(files["target_vocab.json"]) if self.separate_vocabs
                          else self._source_vocab)
    # Target ids come from the model config; source ids from the source vocabulary (they differ
    # only for separate vocabularies; transformers' tokenizer pads sources with its own <pad>).
    source = {name: self._source_vocab.get(info[f"{name}_token"], info[f"{name}_id"])
              for name in ("pad", "unk", "eos")}
    self._source_map = marian_id_map(info["source_vocab_size"], pad_id=source["pad"],
                                     unk_id=source["unk"], eos_id=source["eos"],
                                     start_id=source["pad"])
    self._target_map = marian_id_map(info["target_vocab_size"], pad_id=info["pad_id"],
                                     unk_id=info["unk_id"], eos_id=info["eos_id"],
                                     start_id=info["decoder_start_token_id"])
    self._source_ours = self._inverse(self._source_map)
    self._target_ours = self._inverse(self._target_map)
    self._target_pieces = {m: piece for piece, m in self._target_vocab.items()}
    self._special_pieces = {info["pad_token"], info["unk_token"], info["eos_token"]}

  @staticmethod
  def _inverse(id_map: np.ndarray) -> np.ndarray:
    ours = np.zeros(int(id_map.max()) + 1, np.int64)
    # Reverse order so that a Marian id listed twice (PAD and BOS) maps to the first, PAD.
    for j in reversed(range(len(id_map))):
      ours[id_map[j]] = j
    return ours

  @classmethod
  def from_marian_files(cls, directory: str | os.PathLike, *, pad_id: int, unk_id: int,
                        eos_id: int, decoder_start_token_id: int, source_vocab_size: int,
                        target_vocab_size: int, separate_vocabs: bool) -> "MarianTokenizer":
    """Reads `source.spm`, `target.spm`, `vocab.json` (and `target_vocab.json` for separate
    vocabularies) from a Marian model directory; the ids are the target side's, from its config
    (`unk_id` from the target vocabulary)."""
    files = {}
    names = ["source.spm", "target.spm", "vocab.json"]
    if separate_vocabs:
      names.append("target_vocab.json")
    for name in names:
      path = os.path.join(directory, name)
      if not storage.exists(path):
        raise ValueError(f"{directory} is not a Marian model directory: it has no {name}")
      files[name] = storage.read_bytes(path)
    vocab = json.loads(files.get("target_vocab.json", files["vocab.json"]))
    pieces = {m: p for p, m in vocab.items()}
    info = dict(pad_id=pad_id, unk_id=unk_id, eos_id=eos_id,
                decoder_start_token_id=decoder_start_token_id,
                source_vocab_size=source_vocab_size, target_vocab_size=target_vocab_size,
                pad_token=pieces.get(pad_id, "<pad>"), unk_token=pieces.get(unk_id, "<unk>"),
                eos_token=pieces.get(eos_id, "</s>"))
    files[_MARIAN_IDS_FILE] = json.dumps(info, indent=2, sort_keys=True).encode()
    return cls(files)

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "MarianTokenizer":
    """Loads a directory written by `save`."""
    directory = os.fspath(directory)
    files = {name: storage.read_bytes(os.path.join(directory, name))
             for name in storage.listdir(directory)}
    if _MARIAN_IDS_FILE not in files:
      raise ValueError(f"{directory} has no {_MARIAN_IDS_FILE}: not written by MarianTokenizer")
    return cls(files)

  def save(self, directory: str | os.PathLike) -> None:
    """Writes the tokenizer files into `directory` (created)."""
    for name, data in self._files.items():
      storage.write_atomic(os.path.join(os.fspath(directory), name), data)

  def __getstate__(self):
    return {"files": self._files}

  def __setstate__(self, state):
    self.__init__(state["files"])

  @property
  def files(self) -> dict[str, bytes]:
    """The tokenizer's files (name -> bytes), as `save` writes them."""
    return dict(self._files)

  @property
  def info(self) -> dict:
    """Marian's special ids and tokens and both vocabulary sizes."""
    return dict(self._info)

  @property
  def source_id_map(self) -> np.ndarray:
    """Our source id -> Marian source id (see `marian_id_map`)."""
    return self._source_map.copy()

  @property
  def target_id_map(self) -> np.ndarray:
    """Our target id -> Marian target id."""
    return self._target_map.copy()

  @property
  def vocab_size(self) -> int:
    return len(self._target_map)

  @property
  def source_vocab_size(self) -> int:
    return len(self._source_map)

  def fingerprint(self) -> str:
    digest = hashlib.sha256()
    for name in sorted(self._files):
      digest.update(name.encode() + b"\0" + self._files[name])
    return "marian-" + digest.hexdigest()[:16]

  def _encode(self, texts, sp, vocab, ours) -> list[list[int]]:
    unk = vocab[self._info["unk_token"]]
    out = []
    for text in texts:
      code = []
      # Language codes (">>fra<<") of multilingual models are whole tokens, as in transformers.
      if text.startswith(">>") and (end := text.find("<<")) != -1:
        code, text = [text[:end + 2]], text[end + 2:]
      pieces = code + sp.encode(text, out_type=str)
      out.append([int(ours[vocab.get(piece, unk)]) for piece in pieces])
    return out

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._encode(texts, self._sp_source, self._source_vocab, self._source_ours)

  def encode_target_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._encode(texts, self._sp_target, self._target_vocab, self._target_ours)

  def _decode_ids(self, ids: list[int]) -> str:
    pieces = [self._target_pieces.get(int(self._target_map[i]), self._info["unk_token"])
              for i in ids]
    pieces = [p for p in pieces if p not in self._special_pieces]
    # As transformers' MarianTokenizer.decode(skip_special_tokens=True): with one vocabulary it
    # decodes through the source model.
    sp = self._sp_target if self.separate_vocabs else self._sp_source
    return sp.decode_pieces(pieces).replace("\u2581", " ").strip()
