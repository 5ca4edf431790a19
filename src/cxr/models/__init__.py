"""The models: a registry of builders (``cnn``, ``resnet_small``, ``resnet50``, ``vgg16``, ``vit``), each mapping
(B, 3, H, W) floats to (B, 1) logits, and every per-model fact in its entry; each module of this folder is
imported here and registers its own.

    from cxr.models import build_model, get_entry, list_models
    model = build_model("resnet50", pretrained=False, image_size=64)

Pretrained weights are only ever read from local files: the torch hub cache
(``$TORCH_HOME/hub/checkpoints``), the Hugging Face cache with ``local_files_only=True``, or a path
given as ``models.<name>.weights``. A missing file raises :class:`WeightsUnavailableError` with
the ways out, never a silent random initialisation.
"""

import importlib
import pkgutil

from cxr.models.registry import (
    ModelEntry,
    build_model,
    builder_options,
    check_image_size,
    check_options,
    get_entry,
    input_spec,
    list_models,
    model_arch,
    rebuild,
)
from cxr.pretrained import WeightsUnavailableError

# Every module of this folder is imported, so that each registers its models: a new model is its own module
# (and its params.yaml entry), with no line here. tests/test_dvc_graph.py reads this as importing them all.
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "ModelEntry",
    "WeightsUnavailableError",
    "build_model",
    "builder_options",
    "check_image_size",
    "check_options",
    "get_entry",
    "input_spec",
    "list_models",
    "model_arch",
    "rebuild",
]
