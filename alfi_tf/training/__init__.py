"""Meta-training: meta-datasets, input pipelines, tf.distribute, checkpoints and the Trainer."""
