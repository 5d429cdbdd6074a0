"""Storage backends chosen by DIARIZER_BACKEND: `aws` (S3, SQS, DynamoDB) or `local` (filesystem + sqlite)."""
from __future__ import annotations

from diarizer_service.backends.base import Backends, BackendError, BlobInfo, BlobNotFound, BlobTooLarge
from diarizer_service.settings import Settings


def create_backends(settings: Settings) -> Backends:
    if settings.backend == "aws":
        from diarizer_service.backends.aws import create_aws_backends

        return create_aws_backends(settings)
    from diarizer_service.backends.local import create_local_backends

    return create_local_backends(settings)


__all__ = ["Backends", "BackendError", "BlobInfo", "BlobNotFound", "BlobTooLarge", "create_backends"]
