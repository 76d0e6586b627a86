"""Errors a user caused: `UserError` and its kinds.

`UserError` marks an exception whose message is the whole story: a config value, a path, a
missing or corrupt file, a checkpoint or teacher that does not match the config, a workdir in
use, storage that cannot be reached. The library's error classes of that kind derive from it and
keep their usual base (e.g. ValueError, so `except ValueError` still catches them). The
command-line programs print such an error's message alone and exit with status 2
(`console.run`); every other exception is a bug and keeps its traceback.
"""

EXIT_USER_ERROR = 2


class UserError(Exception):
  """An error in what the user gave (config, flags, files, storage): its message says what to
  change."""


class ConfigError(UserError, ValueError):
  """A config value that is missing, of the wrong kind, or inconsistent with another."""


class ArgumentError(UserError, ValueError):
  """A command-line argument (or its library equivalent) that is missing or does not fit."""


class MissingFileError(UserError, FileNotFoundError):
  """A file or folder the user named, or that a workdir should hold, is not there."""
