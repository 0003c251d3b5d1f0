"""Input pipeline: dataset name in the config -> tokenizer -> per-process numpy batches (no TF).

Entry points (all take a `DataConfig`, whose fields are the keys of `config.data`):

  tokenizer = data.get_tokenizer(data_config, workdir, layout=data.PAIRS)
      Trained once on the training split (one SentencePiece vocabulary shared by source and
      target), stored as `{workdir}/sentencepiece.model`, reused on resume and by translation.
      Synthetic tasks get a `SyntheticTokenizer` with the same interface: `encode(text)`,
      `encode_batch(texts)`, `decode(ids)`, `vocab_size`, `pad_id`, `bos_id`, `eos_id`, `unk_id`,
      `mask_id`. Special ids are module constants of `transformer.data.tokenizer`:
      PAD_ID = 0, UNK_ID = 1, BOS_ID = 2, EOS_ID = 3, MASK_ID = 4.

  it = data.make_train_iterator(data_config, tokenizer, layout=data.PAIRS, process_index=0,
                                process_count=1, num_data_shards=None, cache_dir=None)
      Endless grain `DatasetIterator` of this process's batches; `it.get_state()` returns a
      JSON-serializable dict and `it.set_state(state)` on a freshly made iterator (same config,
      num_workers included) continues with exactly the batches an uninterrupted run would have
      seen (grain's orbax handler `grain.checkpoint.CheckpointSave/CheckpointRestore` works too).
      Each epoch has its own seeded shuffle and holds every kept example exactly once across
      processes; each process reads and tokenizes only its rows. Planning needs the token length
      of every training example: measured once (every process), kept in `cache_dir` (pass the
      workdir) for resumed runs.

  shapes = data.train_batch_shapes(data_config, num_data_shards=1)
      The few global (rows B, length L) training shapes: length buckets with B * L <=
      tokens_per_batch, or one packed shape. B is a multiple of num_data_shards.

  ev = data.make_eval_dataset(data_config, tokenizer, "validation", layout=data.PAIRS,
                              process_index=0, process_count=1, num_data_shards=None)
      `EvalDataset(batches, indices, sources, references, stats)`: every example once, in order,
      in batches of one shape (eval_batch_size rounded up to num_data_shards, max_len); padding
      rows have segmentation 0 and index -1; sources / references are the raw strings for BLEU.

Layouts (`BatchLayout`, in `layouts.py`; a model family's Task names the one it reads) and their
batch keys (int32 numpy arrays of shape (B / process_count, L)):
  PAIRS (translation, EncoderDecoder): inputs, inputs_position, inputs_segmentation, targets,
      targets_position, targets_segmentation. inputs = source ids + EOS, targets = target ids +
      EOS (no BOS: the decoder input is `shift_right(targets)`).
  TEXT (lm, DecoderOnly): targets, targets_position, targets_segmentation (source side or the single
      file of a `text:` dataset).
  MASKED_TEXT (mlm, EncoderOnly): inputs (corrupted), inputs_position, inputs_segmentation, targets
      (original), weights (float32, 1.0 at the positions to predict).
Segmentation is 0 on padding and k for the k-th example of a packed row (1 without packing);
positions restart at 0 for each example.

Datasets (`DataConfig.dataset`): "multi30k" (built by the tfds builder in `multi30k.py`, from
`manual_dir` or downloaded), any tfds translation dataset ("wmt14_translate/de-en", ...), prepared
as array_record in `data_dir`, "tsv:<file>", "text:<source>,<target>" (`{split}` in a path names
the files of each split), "synthetic/copy", "synthetic/reverse", "synthetic/sort".
"""

from transformer.data.config import DataConfig
from transformer.data.layouts import MASKED_TEXT
from transformer.data.layouts import PAIRS
from transformer.data.layouts import TEXT
from transformer.data.layouts import BatchLayout
from transformer.data.pipeline import TOKENIZER_FILE
from transformer.data.pipeline import EvalDataset
from transformer.data.pipeline import ExampleStats
from transformer.data.pipeline import get_tokenizer
from transformer.data.pipeline import make_eval_dataset
from transformer.data.pipeline import make_train_iterator
from transformer.data.pipeline import train_batch_shapes
from transformer.data.tokenizer import SentencePieceTokenizer
from transformer.data.tokenizer import SyntheticTokenizer
from transformer.data.tokenizer import Tokenizer

__all__ = [
  "BatchLayout",
  "DataConfig",
  "MASKED_TEXT",
  "PAIRS",
  "TEXT",
  "EvalDataset",
  "ExampleStats",
  "SentencePieceTokenizer",
  "SyntheticTokenizer",
  "TOKENIZER_FILE",
  "Tokenizer",
  "get_tokenizer",
  "make_eval_dataset",
  "make_train_iterator",
  "train_batch_shapes",
]
