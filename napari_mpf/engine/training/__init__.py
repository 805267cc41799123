"""Training: losses, augmentation, optimisers, calibration, data sets of files, the Trainer, warm-up."""
