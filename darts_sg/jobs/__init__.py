"""The jobs: search, augment (retraining) and deploy (evaluate, export)."""
