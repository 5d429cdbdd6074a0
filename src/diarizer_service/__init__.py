"""diarizer_service: the serverless service around the `diarizer` engine.

API (submit, sync, status, uploads), worker (SQS jobs and S3 batch objects), signed webhooks, API keys,
and storage backends (AWS or a local filesystem + sqlite stand-in). The API path never imports the engine's
heavy modules; only the sync routes and the worker do, lazily.
"""
