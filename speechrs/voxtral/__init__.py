"""Voxtral-Mini-3B-2507: Whisper-style audio encoder, 4x frame-stacking adapter, Mistral decoder."""
