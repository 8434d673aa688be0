"""`speechrs serve`: the aiohttp app (app), its OpenAI-compatible translation layer (openai_api), transcription
routes (transcripts), request guards (guard), HTTP helpers (http), the media policy (media) and the page (web)."""
