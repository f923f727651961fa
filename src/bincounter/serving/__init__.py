"""Serving: `protocol` (request parsing, one JSON response shape, pure functions), `inference` (the
sagemaker-inference handler functions MMS workers run), `handler_service` (the MMS entry class) and
`server` (what `docker run IMAGE serve` runs: MMS behind a health-gated front on :8080)."""
