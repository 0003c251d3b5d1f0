"""Every config key, with its meaning. Other configs import this and override a few keys.

  python train.py --config=configs/default.py --workdir=runs/default

This is the paper's base recipe (Vaswani et al., 2017) on Multi30k de->en; see
configs/multi30k.py for the CPU-sized default job and configs/wmt14_base.py for WMT'14.
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Model: the fields of transformer.TransformerConfig (vocab_size and special ids come from
  # the tokenizer). Defaults are the paper's base model.
  config.model = model = ml_collections.ConfigDict()
  model.d_model = 512  # Model width D.
  model.num_heads = 8  # Attention heads N (head width H = D / N).
  model.d_ff = 2048  # Feed-forward inner width F.
  model.num_encoder_layers = 6  # Encoder layers (translation, mlm).
  model.num_decoder_layers = 6  # Decoder layers (translation, lm).
  model.dropout_rate = 0.1  # Residual and embedding dropout P_drop.
  model.attention_dropout_rate = 0.0  # Dropout on attention weights (paper: none).
  model.max_len = 512  # Positions the model embeds (must be >= data.max_len).
  model.norm_placement = "post"  # "post" (paper) or "pre" LayerNorm.
  model.activation = "relu"  # Feed-forward activation: "relu" (paper) or "gelu".
  model.position_encoding = "sinusoidal"  # "sinusoidal" (paper) or "learned".
  model.share_embeddings = True  # One embedding matrix for source and target.
  model.tie_output_projection = True  # Logits via the transposed embedding (section 3.4).
  model.output_bias = False  # A learned bias on the output logits (imported Marian models).
  model.layer_norm_epsilon = 1e-6  # LayerNorm epsilon.
  model.dtype = "float32"  # Compute dtype: "float32" or "bfloat16" (params stay param_dtype).
  model.param_dtype = "float32"  # Parameter storage dtype.
  model.attention_impl = "xla"  # "xla", "cudnn" (GPU flash attention) or "reference".

  # Data: the fields of transformer.data.DataConfig.
  config.data = data = ml_collections.ConfigDict()
  data.dataset = "multi30k"  # "multi30k", "<tfds name>[/<config>]", "tsv:...", "text:...",
  # or "synthetic/copy" | "synthetic/reverse" | "synthetic/sort".
  data.source_lang = "de"  # Source language code.
  data.target_lang = "en"  # Target language code.
  # (placeholder(str): None by default, still overridable with --config.data.manual_dir=DIR.)
  data.manual_dir = placeholder(str)  # Dir with the raw files (tfds manual dir); None downloads.
  data.data_dir = placeholder(str)  # tfds dir of prepared datasets; None: ~/tensorflow_datasets.
  data.vocab_size = 8000  # SentencePiece vocabulary size shared by source and target.
  data.max_len = 64  # Max tokens per side per example (EOS included).
  data.overlong = "drop"  # Longer training examples: "drop" or "truncate".
  data.tokens_per_batch = 4096  # Tokens per side per global training batch (paper: ~25000).
  data.packing = False  # Pack several examples per row instead of length buckets.
  data.eval_batch_size = 64  # Global examples per evaluation batch.
  data.seed = 0  # Seed of shuffling, synthetic data and masked-LM corruption.
  data.num_threads = 2  # Background threads that build batches.
  data.prefetch_batches = 4  # Batches read ahead.
  data.num_workers = 0  # grain worker processes (0 = threads only).
  data.synthetic_length = 16  # Synthetic tasks: max sequence length.
  data.synthetic_vocab = 32  # Synthetic tasks: number of symbols.
  data.mask_rate = 0.15  # Masked LM: fraction of tokens to predict.

  # Optimizer (section 5.3): Adam with the inverse-square-root warm-up schedule.
  config.optimizer = optimizer = ml_collections.ConfigDict()
  optimizer.name = "adam"  # "adam" (paper) or "adamw".
  optimizer.schedule = "rsqrt"  # "rsqrt": d_model^-0.5*min(s^-0.5, s*warmup^-1.5); "cosine".
  optimizer.learning_rate = 1.0  # rsqrt: factor on the formula (paper 1.0); cosine: peak rate.
  optimizer.warmup_steps = 4000  # Warm-up updates.
  optimizer.b1 = 0.9  # Adam beta1.
  optimizer.b2 = 0.98  # Adam beta2.
  optimizer.eps = 1e-9  # Adam epsilon.
  optimizer.weight_decay = 0.0  # AdamW weight decay (adamw only).
  optimizer.grad_clip_norm = 0.0  # Global-norm gradient clipping; 0 = off.
  optimizer.grad_accum_steps = 1  # Steps whose gradients are averaged per update; 1 = off.

  # Training loop.
  config.training = training = ml_collections.ConfigDict()
  training.task = "translation"  # "translation" (EncoderDecoder), "lm" (DecoderOnly),
  # "mlm" (EncoderOnly).
  training.seed = 0  # Seed of parameter init and dropout: same seed, same run.
  training.num_train_steps = 100_000  # Train steps (micro-steps with grad_accum_steps > 1).
  training.label_smoothing = 0.1  # Label smoothing epsilon_ls (section 5.4).
  training.log_every_steps = 100  # Train metrics to metrics.jsonl / TensorBoard.
  training.eval_every_steps = 1000  # Validation loss, accuracy, perplexity.
  training.bleu_every_steps = 5000  # Validation BLEU (beam search), also at the end; 0 = never.
  training.bleu_num_examples = 0  # Validation sentences decoded for BLEU; 0 = all.
  training.checkpoint_every_steps = 1000  # Checkpoint cadence (also at BLEU evals and exit).
  training.max_checkpoints_to_keep = 3  # Most recent checkpoints kept (plus the best).
  training.best_metric = "eval/bleu"  # Metric of the kept best checkpoint (loss: lower wins).
  training.early_stopping_patience = 0  # Stop when best_metric has not improved in this many
  # evaluations of it (then evaluate on test as usual); 0 = never.
  training.async_checkpointing = True  # Write checkpoints in the background.
  training.average_last_k = 1  # Test BLEU with params averaged over the last k checkpoints.
  training.test_split = "test"  # Final evaluation split (loss; BLEU for translation); "" skips.

  # Device mesh: sizes of the (data, fsdp, tensor) axes; one may be -1 ("the rest").
  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.data = -1  # Data parallelism: the batch is split over it, parameters replicated.
  mesh.fsdp = 1  # Shards parameters and optimizer state (and the batch); for big models.
  mesh.tensor = 1  # Shards heads / feed-forward / vocabulary dimensions.

  # Beam search for BLEU and translation (section 6.1).
  config.decoding = decoding = ml_collections.ConfigDict()
  decoding.beam_size = 4  # Beams K (paper: 4).
  decoding.length_penalty = 0.6  # Length penalty alpha (paper: 0.6).
  decoding.max_extra_length = 50  # Output may be this much longer than the input (paper: 50).

  return config
