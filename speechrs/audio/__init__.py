"""Audio in and out: decoding, resampling and log-mel features (decode), encoding to WAV / MP3 / Opus / AAC / FLAC
(encode), loudness normalisation (loudness), and voice activity for segment timestamps (vad, silero)."""
