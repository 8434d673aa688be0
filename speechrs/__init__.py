"""speechrs: local speech models (Voxtral transcription and audio chat, Dia dialogue speech) from a CLI, an
OpenAI-compatible server or Python."""

__version__ = "0.1.0"


def load(model: str = "mistralai/Voxtral-Mini-3B-2507", **kwargs):
    """Load a model by hub id or local directory; see speechrs.api.load."""
    from speechrs.api import load as _load  # keep `import speechrs` free of torch

    return _load(model, **kwargs)


def quantize(model: str, output, quantize: str = "int8"):
    """Write `model`'s linears as int8 / int4 codes (those a load with `quantize` quantizes) into the new directory
    `output`, which then loads with speechrs.load(output) on any machine; see speechrs.quantize_checkpoint."""
    from speechrs.quantize_checkpoint import quantize_checkpoint

    return quantize_checkpoint(model, output, quantize)
