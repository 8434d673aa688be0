"""The engine: loaded pipelines by id, admission and the asyncio bridge (engine), and the worker thread that batches
the decoder steps of every running request of a model (scheduler)."""
