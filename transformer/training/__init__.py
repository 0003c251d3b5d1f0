"""Training of the Transformer (Vaswani et al., 2017): recipe, steps, state and the run loop.

Modules: `tasks` (one Task per model family), `schedules` and `optimizers` (section 5.3),
`losses` (label smoothing, 5.4), `state` (TrainState, InferenceState), `steps` (pure train/eval
steps), `builder` (sharded state and jitted steps), `run_config` (typed config sections),
`runs` (`setup_run`: config -> tokenizer -> model, for training and inference), `evaluation`
(loss and BLEU), `inference` (load a run; translate lines; evaluate a split), `resume` (what a
rerun keeps), `signals` (stopping between steps), `errors` (errors and exit statuses), `loop`
(`train_and_evaluate(config, workdir)`, imported only by train.py and notebooks).
"""
