"""`diarize serve`: the deployed API and worker handlers on one machine, no AWS account, no Docker.

HTTP requests become API Gateway proxy events for functions/api/app.py; a worker thread feeds the local queue
to functions/worker/app.py. Storage is the service's local backend (files + sqlite) under --data-dir, so a
restart loses no job: a job that was running when the server stopped runs again at the next start.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path

from diarizer_service.local_server.openapi import load_openapi

DEFAULT_PORT = 3000
DEFAULT_GRACE_SECONDS = 30.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diarize serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 3000; 0 = any free port)")
    parser.add_argument("--api-key", metavar="KEY",
                        help="accept this API key (registered on first use); without it a key is created on first "
                             "start and printed once")
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("DIARIZER_DATA_DIR") or "data"),
                        help="where jobs, audio, results and keys are kept (default $DIARIZER_DATA_DIR or ./data)")
    parser.add_argument("--no-worker", action="store_true",
                        help="API only: accepted jobs wait in the queue until a server with a worker runs")
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE_SECONDS, metavar="SECONDS",
                        help="on Ctrl-C/SIGTERM, how long requests in progress and the running job may take to "
                             "finish; a job still running then is left for the next start (default 30)")
    parser.add_argument("--retry-delay", type=float, default=5.0, metavar="SECONDS",
                        help="a job whose attempt failed is retried after this long (default 5)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="level of the handlers' JSON logs on stdout (default INFO)")
    parser.add_argument("--no-access-log", action="store_true", help="do not log each HTTP request on stderr")
    parser.add_argument("--allow-local-webhooks", action="store_true",
                        help="allow webhooks to loopback/private addresses even when --host is not a loopback "
                             "address (by default only a server listening on loopback may call them: otherwise "
                             "anyone with a key could make it POST to this machine's own ports)")
    return parser


def is_loopback_host(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def secure_data_dir(data_dir: Path) -> None:
    """Owner-only, on every start (not only when the dir is created): the database holds the webhook signing
    secrets and the blobs hold customers' audio. Files the server creates later inherit the umask below.

    A shared folder (sticky or world-writable, like /tmp) or another user's is refused, not tightened: making
    /tmp 0700 would break every other program on the machine (ValueError)."""
    mode = data_dir.stat()
    if mode.st_mode & (stat.S_ISVTX | stat.S_IWOTH) or mode.st_uid != os.geteuid():
        raise ValueError(f"{data_dir} is a shared folder or another user's: give a folder of its own, "
                         f"e.g. {data_dir / 'diarizer'}")
    os.umask(0o077)
    data_dir.chmod(0o700)
    for path in data_dir.glob("diarizer.sqlite3*"):  # the database, its -wal and -shm
        path.chmod(0o600)


def say(message: str) -> None:
    print(f"diarize serve: {message}", file=sys.stderr, flush=True)


def configure_environment(data_dir: Path, log_level: str, allow_local_webhooks: bool = True) -> None:
    """Local-mode settings, set before the handlers are imported (the service reads its settings once)."""
    os.environ["DIARIZER_BACKEND"] = "local"
    os.environ["DIARIZER_DATA_DIR"] = str(data_dir)
    # http://127.0.0.1 and localhost receivers: for a server only this machine can reach
    os.environ["DIARIZER_ALLOW_LOCAL_WEBHOOKS"] = "true" if allow_local_webhooks else "false"
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "diarizer")
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Diarizer")
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")  # no CloudWatch here: keep stdout readable
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")  # no X-Ray daemon
    os.environ["POWERTOOLS_LOG_LEVEL"] = log_level
    from diarizer_service.runtime import set_runtime
    from diarizer_service.settings import get_settings

    get_settings.cache_clear()
    set_runtime(None)


class DataDirLock:
    """One server per data dir: the worker loop assumes it is the only consumer of the local queue."""

    def __init__(self, data_dir: Path):
        self.path = data_dir / "serve.lock"
        self._file = None

    def acquire(self) -> bool:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, one server per data dir is then up to the user
            return True
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            self._file = None
            return False
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()
        return True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    data_dir = args.data_dir.expanduser().resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # it holds the webhook signing secrets
        secure_data_dir(data_dir)
    except (OSError, ValueError) as exc:
        print(f"diarize serve: error: cannot use the data dir {data_dir}: {exc}", file=sys.stderr)
        return 1
    lock = DataDirLock(data_dir)
    if not lock.acquire():
        print(f"diarize serve: error: another `diarize serve` is using {data_dir}", file=sys.stderr)
        return 1
    try:
        return _serve(args, data_dir)
    finally:
        lock.release()


def _serve(args: argparse.Namespace, data_dir: Path) -> int:
    allow_local = args.allow_local_webhooks or is_loopback_host(args.host)
    configure_environment(data_dir, args.log_level, allow_local)
    from diarizer_service.errors import BackendError
    from diarizer_service.local_server.gateway import Gateway, GatewayServer
    from diarizer_service.local_server.handlers import load_handler_module
    from diarizer_service.local_server.keys import KeySetupError, announce_keys
    from diarizer_service.local_server.worker_loop import WorkerLoop, fail_dead_letter_job
    from diarizer_service.runtime import get_runtime

    try:
        api_app = load_handler_module("api")
        worker_app = load_handler_module("worker")
    except FileNotFoundError as exc:
        print(f"diarize serve: error: {exc}", file=sys.stderr)
        return 1
    try:
        runtime = get_runtime()
    except ValueError as exc:  # a bad DIARIZER_* setting
        print(f"diarize serve: error: {exc}", file=sys.stderr)
        return 2
    say(f"data dir {data_dir} (jobs, audio, results and keys; kept across restarts)")
    if not allow_local:
        say("webhooks to loopback and private addresses are refused: the server listens beyond loopback "
            "(--allow-local-webhooks allows them)")
    try:
        announce_keys(runtime.backends.keys, args.api_key, say)
    except KeySetupError as exc:
        print(f"diarize serve: error: {exc}", file=sys.stderr)
        return 2

    queue = runtime.backends.queue
    released = queue.release_in_flight()  # we hold the lock: whoever took these messages is gone
    if released:
        say(f"{released} job(s) interrupted by the last stop will run again")
    try:  # we hold the lock, so no write is under way: every temp file is from a write the last stop cut off
        removed = runtime.backends.blobs.remove_stale_temp_files()
    except BackendError as exc:  # not fatal: they are removed at a later start
        say(f"could not remove the temp files of interrupted writes: {exc}")
    else:
        if removed:
            say(f"removed {removed} temp file(s) left by writes the last stop interrupted")
    engine_gate = threading.Lock()  # one engine on this machine: a job or a sync request at a time
    try:
        server = GatewayServer((args.host, args.port),
                               Gateway(api_app.lambda_handler, load_openapi(), engine_gate=engine_gate,
                                       resolver=api_app.app,
                                       uploads=runtime.backends.blobs,
                                       max_upload_bytes=runtime.settings.max_upload_bytes),
                               access_log=not args.no_access_log)
    except OSError as exc:
        print(f"diarize serve: error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    runtime.around_engine = server.gateway.engine_running  # a sync diarization does not hold up other requests
    host, port = server.server_address[:2]
    base_url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
    server.gateway.openapi = load_openapi(base_url)
    # Presigned upload URLs point at this server (DIARIZER_PUBLIC_URL when it is reached by another name).
    runtime.backends.blobs.public_url = runtime.settings.public_url or base_url
    if host in ("0.0.0.0", "::") and not runtime.settings.public_url:
        say(f"upload URLs will name {base_url}, which other machines cannot reach: set DIARIZER_PUBLIC_URL to "
            "the URL they use for this server")

    worker = None
    if not args.no_worker:
        worker = WorkerLoop(queue, worker_app.lambda_handler, retry_delay=args.retry_delay, say=say,
                            engine_gate=engine_gate,
                            on_dead_letter=lambda dead: fail_dead_letter_job(worker_app.get_worker(), dead),
                            warm_up=runtime.engine, sweep=lambda startup: _sweep(worker_app.get_worker(), startup))
        worker.start()
        say(f"worker running (each job is tried up to {runtime.settings.max_receive_count} times)")
    else:
        say("no worker (--no-worker): accepted jobs stay queued until a server with a worker runs")
    return _run_until_stopped(server, worker, base_url, args.grace)


def _sweep(worker, startup: bool):
    """The outbox sweep of the deployed SweeperFunction. At start-up everything in the outbox is due at once: we
    hold the data dir's lock, so no submit is half-way, and a job whose message was lost by the last stop must
    not wait for DIARIZER_SWEEP_AFTER_SECONDS (a duplicate message costs the worker one read)."""
    from diarizer_service.sweeper import sweep

    now = time.time() + (worker.runtime.settings.sweep_after_seconds if startup else 0)
    report = sweep(worker, now=now, budget_seconds=30.0)
    if report.resent or report.redelivered:
        say(f"sweeper: sent {len(report.resent)} queued job(s) again, re-drove {len(report.redelivered)} "
            "pending webhook(s)")
    expire(worker.runtime, time.time())
    return report


def expire(runtime, now: float) -> None:
    """What AWS does on its own, for the data dir: job records past their `expires_at` (the table's TTL) and
    audio, results and uploads older than the retention (the bucket's lifecycle rules) are deleted, so a
    long-running `diarize serve` keeps DIARIZER_RETENTION_DAYS of data, not everything forever."""
    backends, cutoff = runtime.backends, now - runtime.settings.retention_days * 86400
    records = backends.jobs.delete_expired(now)
    files = sum(backends.blobs.remove_older_than(prefix, cutoff) for prefix in ("jobs/", "uploads/"))
    if records or files:
        say(f"retention: removed {records} expired job record(s) and {files} file(s) older than "
            f"{runtime.settings.retention_days} days")


def _run_until_stopped(server, worker, base_url: str, grace: float) -> int:
    """Serve until SIGINT/SIGTERM; then stop accepting, give requests and the running job `grace` seconds."""
    stop = threading.Event()

    def request_stop(signum, _frame) -> None:
        say(f"{signal.Signals(signum).name}: stopping")
        stop.set()

    in_main_thread = threading.current_thread() is threading.main_thread()  # signals can only be set there
    previous = {}
    if in_main_thread:
        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="diarizer-http",
                     daemon=True).start()
    say(f"listening on {base_url}  (OpenAPI document: {base_url}/openapi.json)")
    say(f"async route: POST {base_url}/audio/generic/api/v2/async/diarize?apikey=KEY&webhook=URL&request_id=ID")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        deadline = time.monotonic() + grace
        if worker is not None:
            worker.request_stop()
        server.shutdown()  # no new connections; requests being handled may finish within the grace period
        server.gateway.stop_accepting()
        if not server.gateway.wait_idle(grace):
            say("stopping: a request was still being handled; its client gets no answer")
        server.server_close()
        finished = worker.stop(max(0.0, deadline - time.monotonic())) if worker is not None else True
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not finished:
            say("stopped (a job was interrupted; it runs again at the next start)")
            _exit_now()
        say("stopped")
    return 0


def _exit_now() -> None:
    """Exit with a job still inside the engine: interpreter shutdown under a running ONNX session aborts the
    process (SIGABRT), so skip it. Its message was already released for the next start."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
