"""Periodic and offline evaluators (sample grids, loss per t, FID, digits metrics,
super-resolution PSNR / SSIM and whole-image super-resolution)."""
