"""Errors raised by the face stack. Each message says what went wrong and what to do about it."""


class FaceModelsMissingError(FileNotFoundError):
    """Model files for a face backend are not where they must be (nothing is ever downloaded)."""


class FaceBackendUnavailableError(ImportError):
    """A face backend's Python packages are not installed."""


class EmbeddingSpaceError(ValueError):
    """Two identity embeddings (or an embedding and a model) come from different embedding spaces."""


class NoFaceError(ValueError):
    """An image that must contain a face does not."""
