"""Datasets (TFDS builders) and input pipelines.

Modules:
  pipeline      `make_dataset` (train / eval batches, per-process slices, exact resumption from
                a step) and `dataset_info` (image size, channels, classes, split sizes).
  catalog       the datasets `data.name` selects, config validation, `get_builder`.
  builders/     TFDS builders: `digits` (embedded, built offline from scikit-learn) and the
                manual-download datasets `celebahq256`, `imagenet256`, `lsun_church`.
  image_folder  any folder of images as a TFDS dataset (labels from sub-folders).
  images        shared image reading: decode, centre crop, antialiased resize, skip bad files.
  prepare       command line that builds a dataset into a data_dir once.
  errors        `DataNotPreparedError` and the prepare command shown in its message.
"""
