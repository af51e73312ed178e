"""Detection data: formats, checks, synthetic sets, augmentation and batching."""
