"""`higgs-tokenizer serve`: the codec over HTTP and WebSocket (the [serve] extra).

- `settings`: every limit the server enforces;
- `wire`: request bodies, codes and audio formats, stream messages;
- `metrics`: Prometheus counters;
- `engine`: the model's two workers (live streams first, whole requests after);
- `app`: the Starlette app and `run`.
"""
