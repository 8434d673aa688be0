"""Word alignment (in progress): a wav2vec2 CTC acoustic model (model), its transformers checkpoint (checkpoint) and
CTC forced alignment of a transcript's tokens to its frames (ctc), WhisperX's method for word timestamps."""
