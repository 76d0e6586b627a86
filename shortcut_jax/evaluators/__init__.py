"""Periodic and offline evaluators (sample grids, loss per t, FID, digits metrics)."""
