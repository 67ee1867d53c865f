"""Using a trained machine: SavedModel export, the deployed machine (infer, ask/tell), data files."""
