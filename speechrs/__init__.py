"""speechrs: local speech models (Voxtral transcription and audio chat) from a CLI, a server or Python."""

__version__ = "0.1.0"


def load(model: str = "mistralai/Voxtral-Mini-3B-2507", **kwargs):
    """Load a model by hub id or local directory; see speechrs.api.load."""
    from .api import load as _load  # keep `import speechrs` free of torch

    return _load(model, **kwargs)
