"""Datasets (TFDS builders) and input pipelines.

Modules:
  pipeline      `make_dataset` (train / eval batches, per-process slices, exact resumption from
                a step) and `dataset_info` (image size, channels, classes, split sizes).
  catalog       the datasets `data.name` selects, config validation, `get_builder`.
  builders/     TFDS builders: `digits` (embedded, built offline from scikit-learn), `photos`
                (embedded: crops of the photographs scikit-image / scikit-learn ship, split by
                photograph), `photos_large` (37 photographs from Debian wallpaper packages, or a
                folder of the user's; the super-resolution default), `div2k` (TFDS's DIV2K,
                online or from the unzipped archives) and the manual-download datasets
                `celebahq256`, `imagenet256`, `lsun_church`.
  low_res       the super-resolution input: antialiased downsampling and bicubic upsampling
                (TensorFlow for the pipeline, jax/numpy for evaluation; the same maths).
  latent_dataset  the posterior moments written by `tools.encode_dataset` (latent space).
  image_folder  any folder of images as a TFDS dataset (labels from sub-folders).
  images        shared image reading: decode, centre crop, antialiased resize, skip bad files.
  prepare       command line that builds a dataset into a data_dir once.
  errors        `DataNotPreparedError` and the prepare command shown in its message.
"""
