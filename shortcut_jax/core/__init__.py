"""The lowest layer: pure functions every other layer builds on, with no I/O, no meshes and no
model code — interpolation paths (`paths`), condition kinds and their null values
(`conditioning`), what a guidance scale means and the one guided network call (`guidance`), and
reading one field of a config section (`config_value`)."""
