"""Serving: `protocol` (request parsing, pixel bounds, one JSON response shape, pure functions), `inference` (the
sagemaker-inference handler functions MMS workers run, each on its own GPU), `handler_service` (the MMS entry
class) and `server` (what `docker run IMAGE serve` runs: MMS behind an aiohttp front on :8080 that owns the
health gate, the request limits, the error shape and MMS's lifecycle)."""
