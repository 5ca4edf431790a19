"""Evaluation: test metrics and figures of one checkpoint (``evaluate``), Grad-CAM (``explain``),
and the comparison of every model with the registry's champion (``compare``)."""
