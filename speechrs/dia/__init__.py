"""Dia-1.6B dialogue TTS (both checkpoint generations) and the DAC 44 kHz decoder."""
