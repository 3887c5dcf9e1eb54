"""Training: one loop for every trainer (`python -m maestro_jax.train --config=...`).

    loop.py            the shared loop: restore, step, log, checkpoint, hooks, export
    checkpoints.py     the one orbax checkpoint format (state + config + data position),
                       with the fall-back past unreadable steps
    validate.py        config checks: one line naming the field (ConfigError)
    tensorboard.py     TensorBoard event files without TensorFlow
    cim.py             the CIM trainer (task 'cim'), on:
      cim_config.py      its settings (configs/cim.py)
      cim_loss.py        model configs, the loss and the jitted step
      cim_state.py       the train state and the frozen models
      cim_sample.py      sample images on held-out audio
      optim.py           optimizer and learning-rate schedule
      data.py            the dataset, per-process batch blocks, synthetic data
      text.py            the text caches (null and label embeddings)
    separator.py       the toy separator trainer (task 'separator'), with separator_init.py

The toy world's generative stages are `maestro_jax.toy.stages`.
"""
