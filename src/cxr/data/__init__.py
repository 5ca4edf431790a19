"""Data: sources, synthetic generator, manifest and splits, decoded-image cache, augmentation.

What the data stages share: the error of an unusable source, the report of what fetch did not take
in (split reads it into its quarantine report), and what every walk over a folder of images skips:
operating-system and tool litter that real copies of the archive carry (``__MACOSX/``,
``.DS_Store``, AppleDouble ``._*`` files, ...).
"""

SKIPPED_REPORT = "skipped.csv"  # in the raw tree's root: what fetch did not import, and why
SKIPPED_COLUMNS = ("path", "reason", "detail")


class SourceError(RuntimeError):
    """The data source cannot be used as configured; the message says what to change."""


JUNK_DIRS = frozenset({"__macosx", ".ipynb_checkpoints", ".git", ".dvc"})  # compared lower-cased
JUNK_FILES = frozenset({".ds_store", "thumbs.db", "desktop.ini", ".directory"})


def is_junk(name: str) -> bool:
    """Operating-system litter (never images): a file or folder name from JUNK_DIRS / JUNK_FILES, or ``._*``."""
    low = name.lower()
    return low in JUNK_FILES or low in JUNK_DIRS or name.startswith("._")
