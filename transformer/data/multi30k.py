"""Multi30k task 1 (Elliott et al., 2016) as a tfds dataset: en, de, fr captions, aligned by line.

Prepared as array_record, read with `tfds.data_source` (no TensorFlow). Examples keep the order
of the raw files: example i of a split is line i.
"""

import gzip
import os

import tensorflow_datasets as tfds

LANGUAGES = ("en", "de", "fr")
# Split name -> stem of the raw files `{stem}.{lang}.gz`.
SPLIT_STEMS = {"train": "train", "validation": "val", "test": "test_2016_flickr"}
URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{stem}.{lang}.gz"


def raw_file_name(split: str, lang: str) -> str:
  """Name of the raw gzip file of `split` in `lang`."""
  return f"{SPLIT_STEMS[split]}.{lang}.gz"


def read_raw_lines(path: str | os.PathLike) -> list[str]:
  """Lines of a raw gzip file, without line ends; errors name the file and line."""
  with gzip.open(path, "rb") as f:
    data = f.read()
  lines = data.split(b"\n")
  if lines and lines[-1] == b"":
    lines.pop()
  out = []
  for number, line in enumerate(lines, start=1):
    try:
      out.append(line.decode("utf-8").rstrip("\r"))
    except UnicodeDecodeError as e:
      raise ValueError(f"{path}: line {number} is not valid UTF-8 ({e.reason}).") from e
  return out


class Multi30k(tfds.core.GeneratorBasedBuilder):
  """Multi30k task 1: 29,000 / 1,014 / 1,000 (train / validation / test_2016_flickr) captions."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Task 1 raw captions, en/de/fr, file order kept."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Put {train,val,test_2016_flickr}.{en,de,fr}.gz from "
    "github.com/multi30k/dataset data/task1/raw/ in the manual directory.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description="Multi30k task 1: image captions in English, German and French.",
      features=tfds.features.Translation(languages=LANGUAGES),
      homepage="https://github.com/multi30k/dataset",
      # Keep the file order, so example i is line i (references for BLEU stay in order).
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    names = [raw_file_name(split, lang) for split in SPLIT_STEMS for lang in LANGUAGES]
    try:
      manual_dir = dl_manager.manual_dir
    except AssertionError:  # No (or an empty) manual directory: download the official files.
      manual_dir = None
    if manual_dir is not None:
      paths = {}
      for name in names:
        paths[name] = manual_dir / name
        if not paths[name].exists():
          raise FileNotFoundError(f"Multi30k file {name} is missing from the manual directory "
                                  f"{manual_dir}.")
    else:
      urls = {name: URL.format(stem=name.split(".")[0], lang=name.split(".")[1])
              for name in names}
      paths = dl_manager.download(urls)
    return {split: self._generate_examples(
      {lang: paths[raw_file_name(split, lang)] for lang in LANGUAGES}) for split in SPLIT_STEMS}

  def _generate_examples(self, paths):
    columns = {lang: read_raw_lines(path) for lang, path in paths.items()}
    counts = {lang: len(lines) for lang, lines in columns.items()}
    if len(set(counts.values())) != 1:
      raise ValueError("Multi30k files have different line counts: " + ", ".join(
        f"{paths[lang]}: {n}" for lang, n in counts.items()))
    for i in range(counts[LANGUAGES[0]]):
      pair = {lang: columns[lang][i] for lang in LANGUAGES}
      empty = [str(paths[lang]) for lang, text in pair.items() if not text.strip()]
      if empty:
        raise ValueError(f"Multi30k line {i + 1} is empty in {', '.join(empty)}.")
      yield i, pair
