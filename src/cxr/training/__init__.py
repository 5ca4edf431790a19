"""Training: the per-batch loop and loaders (``engine``), ``fit`` of one model from a fresh
initialisation with selection on validation (``fit``), and the batch size x learning rate grid (``sweep``)."""
