"""alfi-tf: likelihood-free inference with a meta-learned recurrent machine (ALFI), in TensorFlow.

The package is layered the way the method flows (imports only go down; `docs/architecture.md`):

  simulators   `Simulator` (TF/TFP ops) and `NumpySimulator` (numpy through `tf.numpy_function`),
               `box_prior`, the registry (`register_simulator`, `get_simulator`), the built-in
               simulators and `CommandSimulator` (an external program).
  model        the `InferenceMachine` (a Keras model: `compile` / `fit` / `save` work), its
               `Proposal` families (diagonal, full-covariance, mixture, fixed-variance, point),
               `meta_loss`, and batched inference (`Inferrer`, whose answer is an
               `InferenceResult`; `pool_starts` combines runs from several starts, its std
               rescaled by the machine's `PooledStdScales`).
  workdir      a training run's directory and `load_machine`, shared by training and serving.
  training     the `Trainer`: meta-training with exact resume, TensorBoard and `tf.distribute`.
  serving      `export_machine` (a SavedModel needing only TensorFlow), `DeployedMachine` (infer or
               ask/tell with any simulator) and `load_observations` (.npy / .npz / .csv).
  baselines    what ALFI is compared against: amortised neural posterior estimation
               (`PosteriorEstimator`, `NPEConfig`, `train_npe`, `load_npe`) and rejection ABC
               (`RejectionABC`, `ABCConfig`).
  evaluation   `evaluate` a trained workdir on held-out problems against exact references; the
               `comparison` of ALFI, NPE and ABC at counted simulation `budgets`.

A typical session:

    import alfi_tf
    simulator = alfi_tf.get_simulator("poisson")
    alfi_tf.set_global_seed(0)
    trainer = alfi_tf.Trainer(alfi_tf.MachineConfig(simulator="poisson"),
                              alfi_tf.TrainConfig(epochs=5), workdir="runs/poisson")
    trainer.train()
    alfi_tf.export_machine(alfi_tf.load_machine("runs/poisson"), "exports/poisson")
    result = alfi_tf.DeployedMachine.load("exports/poisson").infer(observations)
    result.mean, result.std                      # [B, d] estimates and their uncertainty
"""

__version__ = "0.2.0"

# The imports come after `__version__`: the export module records it.
# pylint: disable=wrong-import-position
from alfi_tf.baselines.abc import ABCConfig, ABCResult, RejectionABC
from alfi_tf.baselines.npe import NPEConfig, PosteriorEstimator
from alfi_tf.baselines.npe_training import load_npe, train_npe
from alfi_tf.config import MachineConfig, TrainConfig
from alfi_tf.evaluation.evaluator import EvaluationConfig, evaluate
from alfi_tf.model.calibration import PooledStdScales
from alfi_tf.model.inference import InferenceResult, Inferrer, pool_starts
from alfi_tf.model.losses import meta_loss
from alfi_tf.model.machine import InferenceMachine
from alfi_tf.model.proposals import (DiagonalGaussian, FixedVarianceGaussian,
                                     FullCovarianceGaussian, GaussianMixture, Point, Proposal,
                                     get_proposal)
from alfi_tf.serving.deploy import DeployedMachine
from alfi_tf.serving.export import export_machine
from alfi_tf.serving.observation_files import load_observations
from alfi_tf.simulators import (NumpySimulator, Simulator, SimulatorError, available_simulators,
                                box_prior, get_simulator, register_simulator)
from alfi_tf.simulators.command import CommandSimulator
from alfi_tf.training.trainer import Trainer, TrainingResult, set_global_seed
from alfi_tf.workdir import load_machine

__all__ = [
    "__version__",
    # simulators
    "Simulator", "NumpySimulator", "CommandSimulator", "SimulatorError", "box_prior",
    "register_simulator",
    "get_simulator", "available_simulators",
    # model
    "MachineConfig", "InferenceMachine", "Proposal", "DiagonalGaussian", "FullCovarianceGaussian",
    "GaussianMixture", "FixedVarianceGaussian", "Point", "get_proposal", "meta_loss", "Inferrer",
    "InferenceResult", "pool_starts", "PooledStdScales",
    # training
    "TrainConfig", "set_global_seed", "Trainer", "TrainingResult", "load_machine",
    # serving
    "export_machine", "DeployedMachine", "load_observations",
    # baselines
    "NPEConfig", "PosteriorEstimator", "train_npe", "load_npe", "ABCConfig", "RejectionABC",
    "ABCResult",
    # evaluation
    "EvaluationConfig", "evaluate",
]
