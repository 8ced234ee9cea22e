"""Image safety classifiers built on open_clip: model loading, concept scoring, trained heads and the
micro-batching runner. Never imports `proxy`.

Public names are imported lazily, so `import classifiers.decode` (used by the proxy's input checks)
does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "ClassifierSettings": "classifiers.settings",
    "ConceptOverrides": "classifiers.settings",
    "ConceptSpec": "classifiers.settings",
    "DecodeLimits": "classifiers.decode",
    "decode_image": "classifiers.decode",
    "sniff_media_type": "classifiers.decode",
    "blur_image": "classifiers.blur",
    "ImageVerdict": "classifiers.verdict",
    "ImageClassifier": "classifiers.classifier",
    "load_classifier": "classifiers.classifier",
    "BatchingRunner": "classifiers.runner",
    "ModelIdentity": "classifiers.loader",
    "ClassifierError": "classifiers.errors",
    "ModelUnavailableError": "classifiers.errors",
    "ImageDecodeError": "classifiers.errors",
    "HeadError": "classifiers.errors",
    "HeadMismatchError": "classifiers.errors",
    "TrainingDataError": "classifiers.errors",
    "ClassifierClosedError": "classifiers.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'classifiers' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
