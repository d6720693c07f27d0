"""Training: data, objective, the trainer and what feeds it.

Submodules: ``config`` (``TrainConfig``, presets), ``data`` (``VolumeRecord``, loading,
``VolumeCache``, datasets, splits, fingerprints), ``augment`` (crops, flips, intensity),
``stream`` (the step sampler of the trainer's loader, per-sample generators, worker
seeding), ``objective`` (similarity + calibrated regulariser), ``calibration`` (the
regulariser scale), ``trainer`` (autoencoders, then the registration network),
``checkpoint``, ``distributed`` (torchrun), ``pipeline`` (records -> bundle, what the CLIs
call) and ``report`` (the training report).
"""
