"""Reading model config JSON with errors that name the file and the missing key."""

import json
from pathlib import Path

from speechrs.errors import UnsupportedModelError


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UnsupportedModelError(f"cannot read model config {path}: {e}") from e


def getter(d: dict, path: Path, prefix: str = ""):
    """get(key) -> d[key], or an error naming `path` and `prefix + key`."""

    def get(key: str):
        if key not in d:
            raise UnsupportedModelError(f"{path}: missing key '{prefix}{key}'")
        return d[key]

    return get


def section(d: dict, key: str, path: Path, prefix: str = "") -> dict:
    if not isinstance(d.get(key), dict):
        raise UnsupportedModelError(f"{path}: missing section '{prefix}{key}'")
    return d[key]
