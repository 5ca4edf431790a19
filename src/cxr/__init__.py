"""cxr: the importable core of the pediatric chest X-ray pipeline (NORMAL vs PNEUMONIA).

Stage scripts in ``src/*.py`` do the I/O; everything here takes values and returns results.
"""

import os

__version__ = "0.1.0"

# MLflow's INFO lines ("Skip logging GPU metrics", "Started monitoring system metrics", "Creating initial
# MLflow database tables") came by the dozen in `dvc repro`'s output; read when mlflow is first imported.
# Warnings and errors still show; MLFLOW_LOGGING_LEVEL=INFO brings the rest back.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

CLASSES = ("NORMAL", "PNEUMONIA")  # label index 0, 1; the positive class is PNEUMONIA
SPLITS = ("train", "val", "test")
