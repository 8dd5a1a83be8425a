"""Torch: models, augmentations, losses, metrics and model bundles. Never imports Ray."""
