"""Common base of the package's TFDS builders (none of them downloads anything)."""

import tensorflow_datasets as tfds


class OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A `GeneratorBasedBuilder` whose data never comes from a URL.

  The builders are not registered in the TFDS catalogue: their names ('digits', ...) are
  generic and registering them at import would clash with other code doing the same. Build
  them by instantiating the class, or through `shortcut_jax.data.catalog.get_builder`.
  """

  # TFDS looks for a checksums file next to the builder's code through `code_path`, and on
  # Python >= 3.9 that lookup imports `importlib_resources`, which tensorflow-datasets 4.9.10
  # does not declare (tensorflow/datasets#11212). These builders download nothing, so there
  # are no checksums to find: skipping the lookup keeps them working without that package.
  code_path = None
