"""Tasks: every family is one value, and a new family (the README's example) is one new Task
that trains through the unchanged loop."""

import jax.numpy as jnp
import pytest

import training_helpers
from transformer import data as data_lib
from transformer import model as model_lib
from transformer.training import loop
from transformer.training import tasks


def _autoencoder_forward(model, batch, *, deterministic, rngs=None):
  """EncoderOnly predicting every input token at its own position."""
  logits = model(batch["inputs"], positions=batch["inputs_position"],
                 segmentation=batch["inputs_segmentation"], deterministic=deterministic,
                 rngs=rngs)
  return logits, batch["inputs"], (batch["inputs_segmentation"] > 0).astype(jnp.float32)


AUTOENCODER = tasks.Task(
    name="autoencoder", model_class=model_lib.EncoderOnly, forward=_autoencoder_forward,
    layout=data_lib.BatchLayout(name="text_inputs", monolingual=True, masked=False,
                                keys=(("inputs", 0, "tokens"), ("inputs_position", 0, "positions"),
                                      ("inputs_segmentation", 0, "segmentation"))),
    decodes=False)


def test_the_three_families_are_tasks():
  assert {name: (t.model_class, t.layout, t.decodes) for name, t in tasks.TASKS.items()} == {
      "translation": (model_lib.EncoderDecoder, data_lib.PAIRS, True),
      "lm": (model_lib.DecoderOnly, data_lib.TEXT, False),
      "mlm": (model_lib.EncoderOnly, data_lib.MASKED_TEXT, False),
  }
  with pytest.raises(ValueError, match="Unknown task 'seq2seq'; training.task must be one of"):
    tasks.get_task("seq2seq")


def test_a_layout_naming_a_missing_side_is_refused():
  with pytest.raises(ValueError, match="reads side 1 of 1"):
    data_lib.BatchLayout(name="bad", monolingual=True, masked=False,
                         keys=(("targets", 1, "tokens"),))


def test_a_new_task_trains_through_the_loop(tmp_path, monkeypatch):
  monkeypatch.setitem(tasks.TASKS, AUTOENCODER.name, AUTOENCODER)
  config = training_helpers.tiny_copy_config(num_train_steps=40)
  config.training.task = "autoencoder"
  config.training.best_metric = "eval/loss"
  config.training.test_split = ""
  config.optimizer.learning_rate = 3.0
  config.optimizer.warmup_steps = 10
  config.model.dropout_rate = 0.0
  summary = loop.train_and_evaluate(config, str(tmp_path))
  assert summary["task"] == "autoencoder" and summary["final_step"] == 40
  # Copying a token to its own position is easy: the loss falls far below log(vocab).
  assert summary["best_value"] < 0.5 * float(jnp.log(config.data.synthetic_vocab))
