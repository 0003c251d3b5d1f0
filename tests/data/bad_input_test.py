"""Bad input gives an error naming the problem; per-line problems are skipped, counted, logged."""

import pytest

from transformer import data
from transformer.data import sources
from transformer.data import tokenizer as tokenizer_lib
from transformer.training import tasks


def _write(path, content: bytes):
  path.write_bytes(content)
  return str(path)


def test_empty_lines_are_skipped_and_counted(tmp_path, caplog):
  src = _write(tmp_path / "s.txt", b"a b\n\nc\n  \nd\n")
  tgt = _write(tmp_path / "t.txt", b"x\ny\n\nz\nw\n")
  with caplog.at_level("WARNING"):
    examples = sources.load_examples(data.DataConfig(dataset=f"text:{src},{tgt}"), "train")
  assert examples.get(range(len(examples))) == [("a b", "x"), ("d", "w")]
  assert examples.skipped == {"empty line": 3}
  assert "skipped 3 lines (empty line)" in caplog.text


def test_different_line_counts_are_an_error(tmp_path):
  src = _write(tmp_path / "s.txt", b"a\nb\nc\n")
  tgt = _write(tmp_path / "t.txt", b"x\ny\n")
  with pytest.raises(ValueError, match=r"counts: .*s.txt has 3 lines, .*t.txt has 2"):
    sources.load_examples(data.DataConfig(dataset=f"text:{src},{tgt}"), "train")


def test_invalid_utf8_lines_are_skipped_and_counted(tmp_path, caplog):
  path = _write(tmp_path / "d.tsv", b"a\tb\n\xff\xfe\tc\nd\t\xc3\n\xc3\xa9\tf\n")
  with caplog.at_level("WARNING"):
    examples = sources.load_examples(data.DataConfig(dataset=f"tsv:{path}"), "train")
  assert examples.get(range(len(examples))) == [("a", "b"), ("\u00e9", "f")]
  assert examples.skipped == {"invalid UTF-8": 2}
  assert "2 lines (invalid UTF-8)" in caplog.text


def test_tsv_lines_without_two_columns_are_counted(tmp_path):
  path = _write(tmp_path / "d.tsv", b"a\tb\nno tab\na\tb\tc\n\tb\n")
  examples = sources.load_examples(data.DataConfig(dataset=f"tsv:{path}"), "train")
  assert len(examples) == 1 and examples.skipped == {"not 2 tab-separated columns": 3}


def test_file_with_no_usable_line_is_an_error(tmp_path):
  path = _write(tmp_path / "d.tsv", b"\n\n\xff\n")
  with pytest.raises(ValueError, match=r"d.tsv holds no usable example"):
    sources.load_examples(data.DataConfig(dataset=f"tsv:{path}"), "train")


def test_missing_file_and_directory_are_named(tmp_path):
  src = _write(tmp_path / "s.txt", b"a\n")
  with pytest.raises(FileNotFoundError, match=r"Data file .*missing.txt does not exist"):
    sources.load_examples(data.DataConfig(dataset=f"text:{src},{tmp_path}/missing.txt"), "train")
  with pytest.raises(FileNotFoundError, match=r"Data directory .*nodir does not exist"):
    sources.load_examples(data.DataConfig(dataset=f"tsv:{tmp_path}/nodir/d.tsv"), "train")
  with pytest.raises(IsADirectoryError, match="is a directory"):
    sources.load_examples(data.DataConfig(dataset=f"tsv:{tmp_path}"), "train")


def test_missing_manual_dir_is_named(tmp_path):
  config = data.DataConfig(dataset="multi30k", manual_dir=str(tmp_path / "absent"),
                           data_dir=str(tmp_path / "tfds"))
  with pytest.raises(FileNotFoundError, match=r"manual_dir .*absent does not exist"):
    sources.load_examples(config, "train")


def test_unknown_dataset_name(tmp_path):
  config = data.DataConfig(dataset="no_such_dataset/de-en", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match=r"Unknown dataset 'no_such_dataset/de-en'.*multi30k"):
    sources.load_examples(config, "train")
  with pytest.raises(ValueError, match="Unknown synthetic task 'shuffle'"):
    data.DataConfig(dataset="synthetic/shuffle")


@pytest.mark.parametrize("dataset,source,target,missing", [
  ("multi30k", "cs", "en", "cs"),
  ("multi30k", "de", "ja", "ja"),
  ("ted_hrlr_translate/pt_to_en", "de", "en", "de"),  # Checked before any download.
])
def test_unknown_language_pair(tmp_path, multi30k_dir, dataset, source, target, missing):
  config = data.DataConfig(dataset=dataset, source_lang=source, target_lang=target,
                           manual_dir=str(multi30k_dir), data_dir=str(tmp_path))
  with pytest.raises(ValueError, match=f"has no language '{missing}': the pair {source}->{target}"):
    sources.load_examples(config, "train")


def test_same_source_and_target_language():
  with pytest.raises(ValueError, match="both 'de'"):
    data.DataConfig(source_lang="de", target_lang="de")


def test_split_of_a_single_file_dataset(tmp_path):
  path = _write(tmp_path / "train.tsv", b"a\tb\n")
  with pytest.raises(ValueError, match=r"has no 'validation' split: put '\{split\}'"):
    sources.load_examples(data.DataConfig(dataset=f"tsv:{path}"), "validation")
  _write(tmp_path / "validation.tsv", b"c\td\n")
  config = data.DataConfig(dataset=f"tsv:{tmp_path}/{{split}}.tsv")
  assert sources.load_examples(config, "validation").get([0]) == [("c", "d")]
  with pytest.raises(ValueError, match="Unknown split 'dev'"):
    sources.load_examples(config, "dev")


def test_monolingual_file_for_translation_is_an_error(tmp_path):
  path = _write(tmp_path / "mono.txt", b"a\n")
  config = data.DataConfig(dataset=f"text:{path}")
  with pytest.raises(ValueError, match="names one file, which is monolingual"):
    sources.load_examples(config, "train")
  assert sources.load_examples(config, "train", monolingual=True).get([0]) == [("a",)]


@pytest.mark.parametrize("field,value,message", [
  ("vocab_size", 0, "vocab_size must be a positive integer, got 0"),
  ("max_len", 1, "max_len must be at least 2"),
  ("tokens_per_batch", 8, "tokens_per_batch=8 is smaller than max_len=64"),
  ("overlong", "cut", "overlong must be one of"),
  ("mask_rate", 1.5, "mask_rate must be in"),
  ("num_workers", -1, "num_workers must be a non-negative integer, got -1"),
  ("dataset", "", "dataset must be a non-empty string"),
])
def test_bad_config_values(field, value, message):
  with pytest.raises(ValueError, match=message):
    data.DataConfig(**{field: value})


def test_bad_pipeline_arguments():
  config = data.DataConfig(dataset="synthetic/copy", max_len=16, tokens_per_batch=64)
  tokenizer = tokenizer_lib.SyntheticTokenizer(32)
  with pytest.raises(ValueError, match=r"process_index=2 is not in \[0, 2\)"):
    data.make_train_iterator(config, tokenizer, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="num_data_shards=3 must be a positive multiple of "
                                       "process_count=2"):
    data.make_eval_dataset(config, tokenizer, "test", process_count=2, num_data_shards=3)
  with pytest.raises(ValueError, match="cannot hold 8 rows"):
    data.train_batch_shapes(config, num_data_shards=8)
  with pytest.raises(ValueError, match="Unknown task 'seq2seq'"):
    data.make_train_iterator(config, tokenizer, layout=tasks.get_task("seq2seq").layout)
