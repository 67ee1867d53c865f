"""absl binaries: `python -m experiments.train|evaluate`."""
