"""A Keras model whose `fit` minimises one scalar loss per batch: the Keras training surface shared
by the inference machine and the NPE baseline."""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator

import keras
import tensorflow as tf


@contextlib.contextmanager
def float32_layers() -> Iterator[None]:
  """Layers created inside compute and store float32, whatever the global Keras dtype policy.

  The models compute in float32 throughout (the simulators return float32), so a user's
  `keras.config.set_floatx("float64")` or mixed-precision policy, picked up by the sublayers,
  would otherwise break the first call with a dtype clash deep inside the graph.
  """
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy("float32")
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


class LossModel(keras.Model):
  """`train_step` / `test_step` around `batch_loss`, reporting Keras' running mean of the loss.

  Subclasses implement `batch_loss(data, training)`; there are no targets and no compiled loss.
  """

  def compile(self, *args, **kwargs) -> None:
    """`keras.Model.compile`, then the optimizer's slots are created for the trainable weights.

    Created now rather than inside the first traced train step: a first `fit` that fails (a
    malformed batch) would otherwise leave every later `fit` failing with "Creating variables on
    a non-first call to a function decorated with tf.function".
    """
    super().compile(*args, **kwargs)
    self.optimizer.build(self.trainable_variables)

  def compile_from_config(self, config: Dict[str, Any]) -> None:
    """Compiles a loaded model as it was saved (`get_compile_config`): Keras' own version skips
    models that override `compile`, which would come back from `load_model` uncompiled."""
    self.compile(**keras.saving.deserialize_keras_object(config))

  def batch_loss(self, data, training: bool = False) -> tf.Tensor:
    """The scalar loss of one batch `data` as `fit` / `evaluate` hand it over."""
    raise NotImplementedError(f"{type(self).__name__} must implement batch_loss")

  def _logs(self, loss: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Updates Keras' loss tracker (the running mean over an epoch) and returns the logs."""
    for metric in self.metrics:
      if metric.name == "loss":
        metric.update_state(loss)
    return {metric.name: metric.result() for metric in self.metrics}

  def train_step(self, data) -> Dict[str, tf.Tensor]:
    with tf.GradientTape() as tape:
      loss = self.batch_loss(data, training=True)
    self.optimizer.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)
    return self._logs(loss)

  def test_step(self, data) -> Dict[str, tf.Tensor]:
    return self._logs(self.batch_loss(data))
