"""Local mode (`diarize serve`): the deployed API and worker Lambda handlers behind a stdlib HTTP server and a
worker thread, on the local filesystem + sqlite backend. Entry point: `main(argv) -> int`."""
from diarizer_service.local_server.cli import main

__all__ = ["main"]
