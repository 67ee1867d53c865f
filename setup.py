"""alfi-tf: likelihood-free inference with a meta-learned recurrent machine, in TensorFlow/Keras."""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "alfi_tf", "__init__.py")) as stream:
  VERSION = re.search(r'__version__ = "([^"]+)"', stream.read()).group(1)

setup(
    name="alfi-tf",
    version=VERSION,
    description="Recurrent machines for likelihood-free inference (ALFI) in TensorFlow / Keras 3",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["alfi_tf", "alfi_tf.*", "experiments"]),
    package_data={"experiments": ["configs/*.cfg"]},
    # TF 2.21 needs Python >= 3.10; on 3.9 pip would fall back to an untested TF.
    python_requires=">=3.10,<3.13",
    # Tested with TF 2.18 (numpy 2.0) and TF 2.21 (numpy 2.4), the oldest and the newest that TFP 0.25
    # runs with. TFP 0.25 imports tf-keras (hence the [tf] extra), which must match the TF minor
    # version; our own models use Keras 3. TF >= 2.21 no longer pulls in TensorBoard, which
    # tf.summary needs.
    install_requires=[
        "tensorflow>=2.18,<2.22",
        "tensorflow-probability[tf]==0.25.0",
        "tf-keras>=2.18,<2.22",
        "tensorboard>=2.18,<2.22",
        "keras>=3.5,<3.16",
        "numpy>=1.26,<2.5",
        "absl-py>=2.1,<3",
        "matplotlib>=3.8,<4",
        "pillow>=9,<14",
    ],
    entry_points={"console_scripts": [
        "alfi-train=experiments.train:entry_point",
        "alfi-evaluate=experiments.evaluate:entry_point",
        "alfi-export=experiments.export:entry_point",
        "alfi-infer=experiments.infer:entry_point",
        "alfi-report=experiments.report:entry_point",
        "alfi-npe=experiments.npe:entry_point",
    ]},
    extras_require={
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "scipy>=1.11,<2",
                 "hypothesis>=6.100,<7"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Physics",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
