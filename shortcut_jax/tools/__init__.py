"""Command-line tools: checkpoint importers and weight converters."""
