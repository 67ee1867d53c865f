"""alfi-tf: likelihood-free inference with a meta-learned recurrent machine (ALFI) in TensorFlow."""

__version__ = "0.1.0"
