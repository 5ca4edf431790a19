"""Data: sources, synthetic generator, manifest and splits, decoded-image cache, augmentation."""
