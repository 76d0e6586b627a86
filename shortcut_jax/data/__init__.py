"""Datasets (TFDS builders) and input pipelines."""
