"""The HTTP face: OpenAI-compatible inference, ingest, the admin console and /metrics, all behind tokens."""
