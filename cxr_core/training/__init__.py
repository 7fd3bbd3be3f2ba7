"""Training a run: the one config object (``config``) with its presets and augmentation,
the runtime (device, autocast, channels-last), the data a config trains on (``inputs``),
cached backbone features, the engine (``train_one_epoch``, ``evaluate``, ``fit``) and the
duration estimates shown before a launch."""
