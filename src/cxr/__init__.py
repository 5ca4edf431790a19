"""cxr: the importable core of the pediatric chest X-ray pipeline (NORMAL vs PNEUMONIA).

Stage scripts in ``src/*.py`` do the I/O; everything here takes values and returns results.
"""

__version__ = "0.1.0"

CLASSES = ("NORMAL", "PNEUMONIA")  # label index 0, 1; the positive class is PNEUMONIA
SPLITS = ("train", "val", "test")
