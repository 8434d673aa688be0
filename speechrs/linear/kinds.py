"""The weight quantizations speechrs runs, spelled once (torch-free: the CLI builds its choices from it)."""

QUANTIZATIONS = ("int8", "int4")  # int8 per output channel; int4 in groups along K (quant.py)
CHOICES = ("none", *QUANTIZATIONS)


def check_quantization(name: str | None) -> str | None:
    """'int8' / 'int4', or None for no quantization (None, "" or "none"); a ValueError names the choices."""
    if name in (None, "", "none"):
        return None
    if name not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization '{name}'; choose {', '.join(QUANTIZATIONS)} or none")
    return name
