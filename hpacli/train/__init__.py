"""Training: losses, schedules, augmentation, checkpoints, the shared trainer, datasets."""
