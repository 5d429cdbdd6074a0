"""Load the deployed Lambda handlers (functions/api/app.py, functions/worker/app.py) so local mode runs the same code.

Both files are called `app.py` and are not a package, so they are imported by file path under distinct module
names. They are looked up next to the source tree (a repository checkout, editable install) or in
$DIARIZER_FUNCTIONS_DIR.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

_REPO_ROOT = Path(__file__).resolve().parents[3]  # src/diarizer_service/local_server/ -> repository root


def functions_dir() -> Path:
    configured = os.environ.get("DIARIZER_FUNCTIONS_DIR", "").strip()
    return Path(configured) if configured else _REPO_ROOT / "functions"


def load_handler_module(name: str) -> ModuleType:
    """functions/<name>/app.py as module `diarizer_local_<name>_app` (imported once per process)."""
    module_name = f"diarizer_local_{name}_app"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = functions_dir() / name / "app.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run from a checkout of the repository, or set "
                                "DIARIZER_FUNCTIONS_DIR")
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


@dataclass
class LocalLambdaContext:
    """The attributes of a Lambda context object that powertools and the handlers read. Its remaining time
    counts down from creation like a real invocation's (the API's 29 s; the worker loop uses LocalWorkerContext)."""

    function_name: str
    memory_limit_in_mb: int = 3008
    timeout_seconds: int = 900
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "local"
    log_stream_name: str = "local"
    _started: float = field(default_factory=time.monotonic, repr=False)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:local:000000000000:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_seconds - (time.monotonic() - self._started)) * 1000))


class LocalWorkerContext(LocalLambdaContext):
    """The worker loop's context. Nothing kills a local job at the Lambda timeout, so it has no remaining time:
    the worker handler reads a context without get_remaining_time_in_millis as "no deadline", and the last
    attempt's watchdog (which fails a job just before Lambda would kill it) stays off instead of failing a long
    job that is still running."""

    get_remaining_time_in_millis = None  # type: ignore[assignment]
