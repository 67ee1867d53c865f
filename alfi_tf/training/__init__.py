"""Meta-training: meta-datasets, input pipelines, tf.distribute, the train step, checkpoints and the
Trainer. The public names:

  Trainer              meta-trains one workdir: progress, TensorBoard, validation, checkpoints,
                       and at the end the recalibration of the answer's std (`calibrate`).
  calibrate            fits and sets a trained machine's std factors on fresh problems.
  TrainingResult       the summary of a finished run.
  set_global_seed      seeds the initial weights; call it with the run's seed before a `Trainer`.
  make_train_step      one Adam step on a global batch, the replicas' gradients summed and clipped.
  CheckpointKeeper     saves a run on every worker, restores its newest readable checkpoint.
  Problems             a set of problems: `theta [K, d]`, `observations [K, n, d_x]`.
  generate_problems    a seeded meta-dataset in memory.
  ProblemStore         a seeded meta-dataset on disk, streamed back.
  MetaTrainingData     a run's meta-training and validation sets.
  meta_training_data   creates them from the run's settings and seed.
  adapt_machine        sets the machine's standardisation statistics from the meta-training set.
  training_batches     one global batch per step as a `tf.data` pipeline, resumable at any step.
  training_step_seeds  the machine seed and online-problem seed of a training step.
  make_strategy        a `tf.distribute` strategy by name (default, mirrored, multi_worker).
"""

from alfi_tf.training.calibration import calibrate
from alfi_tf.training.checkpoints import CheckpointKeeper
from alfi_tf.training.data import Problems, ProblemStore, generate_problems
from alfi_tf.training.distribute import make_strategy
from alfi_tf.training.pipeline import (MetaTrainingData, adapt_machine, meta_training_data,
                                       training_batches, training_step_seeds)
from alfi_tf.training.step import make_train_step
from alfi_tf.training.trainer import Trainer, TrainingResult, set_global_seed

__all__ = [
    "Trainer", "TrainingResult", "set_global_seed", "calibrate", "make_train_step",
    "CheckpointKeeper",
    "Problems", "generate_problems", "ProblemStore", "MetaTrainingData", "meta_training_data",
    "adapt_machine", "training_batches", "training_step_seeds", "make_strategy",
]
