"""The command line: `speechrs transcribe`, `speak`, `serve`, `voices` and `quantize` (typer + rich; main.py)."""
