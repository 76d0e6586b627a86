"""Checkpoints: the library's Orbax checkpoints and readers for the original codebase's pickles."""
