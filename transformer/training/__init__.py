"""Training of the Transformer (Vaswani et al., 2017): recipe, steps, state and the run loop.

Modules: `schedules` and `optimizers` (section 5.3), `losses` (label smoothing, 5.4), `state`
(TrainState pytree), `steps` (pure train/eval steps), `builder` (sharded state and jitted steps),
`evaluation` (loss and BLEU), `inference` (load a run for translation), `run_config` (typed
config sections), `loop` (`train_and_evaluate(config, workdir)`, used by train.py).
"""
