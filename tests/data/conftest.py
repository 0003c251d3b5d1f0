"""Session fixtures: Multi30k prepared once from ../shared/data/multi30k, and its tokenizer."""

import pathlib

import pytest

from transformer import data

# CI runs in a fresh clone with shared/ beside it: <clone>/../shared/data/multi30k.
MULTI30K_DIR = pathlib.Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "multi30k"


@pytest.fixture(scope="session")
def multi30k_dir() -> pathlib.Path:
  if not MULTI30K_DIR.is_dir():
    pytest.fail(f"Multi30k raw files not found at {MULTI30K_DIR.resolve()}.")
  return MULTI30K_DIR.resolve()


@pytest.fixture(scope="session")
def multi30k_config(multi30k_dir, tmp_path_factory) -> data.DataConfig:
  """de->en Multi30k, prepared (array_record) into a session temporary tfds directory."""
  config = data.DataConfig(dataset="multi30k", source_lang="de", target_lang="en",
                           manual_dir=str(multi30k_dir),
                           data_dir=str(tmp_path_factory.mktemp("tfds")), tokens_per_batch=2048)
  data.sources.load_examples(config, "train")  # Prepares every split.
  return config


@pytest.fixture(scope="session")
def multi30k_workdir(tmp_path_factory) -> pathlib.Path:
  return tmp_path_factory.mktemp("workdir")


@pytest.fixture(scope="session")
def multi30k_tokenizer(multi30k_config, multi30k_workdir) -> data.Tokenizer:
  return data.get_tokenizer(multi30k_config, multi30k_workdir)
