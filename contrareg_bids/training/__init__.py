"""Training: data (records, loading, cache, datasets, samplers), configuration, trainers.

Submodules: ``data`` (``VolumeRecord``, ``load_volume``, ``VolumeCache``,
``AutoencoderDataset``, ``PairDataset``, ``split_records``, ``data_fingerprint``),
``augment`` (crops, flips, intensity augmentation), ``samplers`` (``make_loader``,
``EpochSampler``, per-sample generators), ``config`` (``TrainConfig``).
"""
