"""The classifier package's own error tree, so callers catch one family and never a library's.

    ClassifierError                      anything this package raises on purpose
    +-- ModelUnavailableError            weights missing, tag unknown, offline without a cached copy
    +-- ImageDecodeError                 the bytes are not an image we accept (message is client-safe)
    +-- HeadError                        a trained head file cannot be used
    |   +-- HeadMismatchError            the head was trained for another embedding model
    +-- TrainingDataError                a labelled folder cannot be used for training or evaluation
    +-- ClassifierClosedError            the batching runner was closed while an image waited

Torch, open_clip, Pillow and huggingface_hub errors are re-raised as one of these, with the original
as `__cause__`. This module must never import torch or Pillow: it is imported by lightweight callers.
"""

from __future__ import annotations


class ClassifierError(Exception):
    """Base class of every error this package raises on purpose."""


class ModelUnavailableError(ClassifierError):
    """The embedding model's weights cannot be found or fetched; never answered by a silent fallback."""


class ImageDecodeError(ClassifierError):
    """The data is not an image we accept. `str(error)` is safe to show to an API client."""


class HeadError(ClassifierError):
    """A trained head file is missing, malformed or unusable."""


class HeadMismatchError(HeadError):
    """The head was trained on embeddings of another model (architecture or checkpoint differ)."""


class TrainingDataError(ClassifierError):
    """A labelled image folder has the wrong layout or too few images."""


class ClassifierClosedError(ClassifierError):
    """The batching runner is not running (not started yet, or closed)."""
