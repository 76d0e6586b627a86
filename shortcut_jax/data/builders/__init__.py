"""TFDS builders of the package: `digits` (embedded) and the manual-download datasets."""
