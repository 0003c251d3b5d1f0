"""`DataConfig`: every setting of the input pipeline, i.e. the keys of `config.data`."""

import dataclasses

# Accepted forms of `DataConfig.dataset`, for error messages.
DATASET_FORMS = (
  "multi30k",
  "<tfds name>[/<config>] (e.g. wmt14_translate/de-en, ted_hrlr_translate/pt_to_en)",
  "tsv:<file.tsv> (two tab-separated columns: source, target)",
  "text:<source file>,<target file> (aligned lines; one file = monolingual)",
  "synthetic/copy, synthetic/reverse, synthetic/sort",
)
SYNTHETIC_TASKS = ("copy", "reverse", "sort")
OVERLONG_POLICIES = ("drop", "truncate")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Input pipeline settings; field names are exactly the keys of `config.data`.

  Paths in `tsv:` / `text:` datasets may contain `{split}`, replaced by the split name
  (`train`, `validation`, `test`); without it the files are the `train` split only.
  """

  # Dataset, see DATASET_FORMS: "multi30k", "wmt14_translate/de-en", "tsv:/p/{split}.tsv",
  # "text:/p/{split}.de,/p/{split}.en", "synthetic/copy", ...
  dataset: str = "multi30k"
  # Source and target language codes (features of the tfds dataset; ignored by text/tsv/synthetic).
  source_lang: str = "de"
  target_lang: str = "en"
  # Local directory with raw files for tfds manual download (Multi30k: {stem}.{lang}.gz); None
  # downloads from the official URLs.
  manual_dir: str | None = None
  # tfds data directory where prepared datasets live; None = tfds default (~/tensorflow_datasets).
  data_dir: str | None = None
  # SentencePiece vocabulary size, shared by source and target (8000 Multi30k, 32000-37000 WMT).
  vocab_size: int = 8000
  # Maximum tokens per side per example, EOS included; longer examples are dropped or truncated.
  max_len: int = 64
  # What to do with training examples longer than max_len: "drop" or "truncate" (eval truncates).
  overlong: str = "drop"
  # Tokens (padding included) per side per global training batch; the paper uses about 25000.
  tokens_per_batch: int = 4096
  # Pack several examples per row of length max_len (segment ids) instead of length buckets.
  packing: bool = False
  # Global number of examples per eval batch (rounded up to a multiple of the data shards).
  eval_batch_size: int = 64
  # Seed of shuffling, synthetic data and masked-LM corruption.
  seed: int = 0
  # Threads that load and tokenize batches in the background (prefetching).
  num_threads: int = 2
  # Batches read ahead by those threads.
  prefetch_batches: int = 4
  # Extra worker processes (grain multiprocessing); 0 = threads in the training process only.
  num_workers: int = 0
  # Synthetic tasks: maximum sequence length (lengths are uniform in [1, synthetic_length]).
  synthetic_length: int = 16
  # Synthetic tasks: number of distinct symbols.
  synthetic_vocab: int = 32
  # Masked LM: fraction of tokens chosen for prediction (80% [MASK], 10% random, 10% unchanged).
  mask_rate: float = 0.15

  def __post_init__(self):
    if not isinstance(self.dataset, str) or not self.dataset.strip():
      raise ValueError(f"dataset must be a non-empty string, got {self.dataset!r}.")
    if self.dataset.startswith("synthetic/"):
      task = self.dataset.split("/", 1)[1]
      if task not in SYNTHETIC_TASKS:
        raise ValueError(f"Unknown synthetic task {task!r} in dataset {self.dataset!r}; "
                         f"expected one of {SYNTHETIC_TASKS}.")
    if self.source_lang == self.target_lang and not self.dataset.startswith(("synthetic/",
                                                                            "tsv:", "text:")):
      raise ValueError(f"source_lang and target_lang are both {self.source_lang!r}.")
    for name in ("vocab_size", "max_len", "tokens_per_batch", "eval_batch_size",
                 "prefetch_batches", "synthetic_length", "synthetic_vocab"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    for name in ("num_threads", "num_workers"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
    if self.max_len < 2:
      raise ValueError(f"max_len must be at least 2 (one token plus EOS), got {self.max_len}.")
    if self.tokens_per_batch < self.max_len:
      raise ValueError(f"tokens_per_batch={self.tokens_per_batch} is smaller than "
                       f"max_len={self.max_len}: not even one example fits a batch.")
    if self.overlong not in OVERLONG_POLICIES:
      raise ValueError(f"overlong must be one of {OVERLONG_POLICIES}, got {self.overlong!r}.")
    if not 0.0 < self.mask_rate < 1.0:
      raise ValueError(f"mask_rate must be in (0, 1), got {self.mask_rate!r}.")
    if not isinstance(self.seed, int):
      raise ValueError(f"seed must be an integer, got {self.seed!r}.")
