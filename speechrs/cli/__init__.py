"""The command line: `speechrs transcribe`, `speak`, `serve`, `voices` and `quantize` (typer + rich)."""

from speechrs.cli.app import app, main

__all__ = ["app", "main"]
