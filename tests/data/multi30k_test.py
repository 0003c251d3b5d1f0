"""The Multi30k tfds builder, prepared without TensorFlow and read with tfds data sources."""

import gzip
import sys

import pytest
import tensorflow_datasets as tfds

from transformer.data import multi30k
from transformer.data import sources


def _raw_lines(directory, split, lang):
  with gzip.open(directory / multi30k.raw_file_name(split, lang), "rt", encoding="utf-8") as f:
    return f.read().splitlines()


@pytest.mark.parametrize("split,size", [("train", 29_000), ("validation", 1_014),
                                        ("test", 1_000)])
def test_split_sizes_and_first_pair_match_raw_files(multi30k_config, multi30k_dir, split, size):
  builder = multi30k.Multi30k(data_dir=multi30k_config.data_dir, file_format="array_record")
  assert builder.info.splits[split].num_examples == size
  source = builder.as_data_source(split=split)
  assert len(source) == size
  for index in (0, size - 1):
    record = source[index]
    for lang in multi30k.LANGUAGES:
      assert record[lang].decode("utf-8") == _raw_lines(multi30k_dir, split, lang)[index]


def test_pair_is_chosen_by_config(multi30k_config, multi30k_dir):
  examples = sources.load_examples(multi30k_config, "test")
  assert examples.get([0]) == [(_raw_lines(multi30k_dir, "test", "de")[0],
                                _raw_lines(multi30k_dir, "test", "en")[0])]
  fr_en = type(multi30k_config)(**{**multi30k_config.__dict__, "source_lang": "fr"})
  assert sources.load_examples(fr_en, "test").get([0])[0][0] == _raw_lines(
    multi30k_dir, "test", "fr")[0]


def test_no_tensorflow_imported(multi30k_config):
  sources.load_examples(multi30k_config, "validation").get([0, 1])
  assert "tensorflow" not in sys.modules


def _write_raw(directory, lines_by_name):
  directory.mkdir(parents=True, exist_ok=True)
  for name, lines in lines_by_name.items():
    with gzip.open(directory / name, "wb") as f:
      f.write(lines)


def _all_files(text=b"a\nb\n"):
  return {multi30k.raw_file_name(s, lang): text for s in multi30k.SPLIT_STEMS
          for lang in multi30k.LANGUAGES}


def _prepare(tmp_path, manual_dir):
  builder = multi30k.Multi30k(data_dir=str(tmp_path / "tfds"), file_format="array_record")
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def test_missing_raw_file_is_named(tmp_path):
  files = _all_files()
  del files["val.fr.gz"]
  _write_raw(tmp_path / "raw", files)
  with pytest.raises(FileNotFoundError, match="val.fr.gz"):
    _prepare(tmp_path, tmp_path / "raw")


def test_different_line_counts_are_an_error(tmp_path):
  files = _all_files()
  files["train.de.gz"] = b"a\nb\nc\n"
  _write_raw(tmp_path / "raw", files)
  with pytest.raises(ValueError, match="different line counts.*train.de.gz: 3"):
    _prepare(tmp_path, tmp_path / "raw")


def test_invalid_utf8_is_an_error(tmp_path):
  files = _all_files()
  files["test_2016_flickr.en.gz"] = b"a\n\xff\xfe\n"
  _write_raw(tmp_path / "raw", files)
  with pytest.raises(ValueError, match="test_2016_flickr.en.gz: line 2 is not valid UTF-8"):
    _prepare(tmp_path, tmp_path / "raw")


def test_empty_line_is_an_error(tmp_path):
  files = _all_files()
  files["val.en.gz"] = b"a\n \n"
  _write_raw(tmp_path / "raw", files)
  with pytest.raises(ValueError, match="line 2 is empty in .*val.en.gz"):
    _prepare(tmp_path, tmp_path / "raw")


class _OfflineDownloadManager:
  """Stands in for tfds's download manager with no manual dir: 'downloads' from a local dir."""

  def __init__(self, raw_dir):
    self.raw_dir = raw_dir
    self.urls = None

  @property
  def manual_dir(self):
    raise AssertionError("Manual directory not enabled.")

  def download(self, urls):
    self.urls = urls
    return {name: self.raw_dir / name for name in urls}


def test_without_manual_dir_the_official_files_are_downloaded(tmp_path, multi30k_dir):
  builder = multi30k.Multi30k(data_dir=str(tmp_path), file_format="array_record")
  manager = _OfflineDownloadManager(multi30k_dir)
  generators = builder._split_generators(manager)
  base = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"
  assert manager.urls["val.de.gz"] == base + "val.de.gz"
  assert manager.urls["test_2016_flickr.fr.gz"] == base + "test_2016_flickr.fr.gz"
  assert len(manager.urls) == 9
  key, first = next(iter(generators["validation"]))
  assert key == 0 and first["en"] == _raw_lines(multi30k_dir, "validation", "en")[0]
