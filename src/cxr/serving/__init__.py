"""Using a trained model: image readers incl. DICOM (``imageio``), ``Predictor`` for files (``predict``),
the ``cxr predict`` command (``cli``) and the MLflow pyfunc model (``pyfunc``)."""
