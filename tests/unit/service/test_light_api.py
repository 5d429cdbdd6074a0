"""The async API function must stay light: no onnxruntime or scipy on its import or request path."""
import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]

SCRIPT = r"""
import base64, importlib.util, io, json, math, struct, sys, wave
spec = importlib.util.spec_from_file_location("api_app", "functions/api/app.py")
app = importlib.util.module_from_spec(spec); spec.loader.exec_module(app)
from diarizer_service.auth import create_key
from diarizer_service.runtime import get_runtime
key = create_key(get_runtime().backends.keys).api_key
buffer = io.BytesIO()
with wave.open(buffer, "wb") as out:
    out.setnchannels(1); out.setsampwidth(2); out.setframerate(16000)
    out.writeframes(b"".join(struct.pack("<h", int(3000 * math.sin(n / 5))) for n in range(16000)))
event = {"httpMethod": "POST", "path": "/audio/generic/api/v2/async/diarize", "resource": "/audio/generic/api/v2/async/diarize",
         "headers": {"content-type": "application/json"}, "multiValueHeaders": {}, "isBase64Encoded": False,
         "queryStringParameters": {"apikey": key, "webhook": "http://127.0.0.1:9/hook"},
         "requestContext": {"requestId": "r", "stage": "Prod", "path": "/x", "resourcePath": "/x", "httpMethod": "POST"},
         "body": json.dumps({"content": base64.b64encode(buffer.getvalue()).decode()})}
class Context:
    function_name = "api"; memory_limit_in_mb = 256; aws_request_id = "r"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:api"
answer = app.lambda_handler(event, Context())
heavy = sorted(name for name in ("onnxruntime", "scipy", "diarizer.pipeline") if name in sys.modules)
print(json.dumps({"status": answer["statusCode"], "heavy": heavy}))
"""


def test_async_submit_imports_no_engine_internals(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DIARIZER_BACKEND": "local", "DIARIZER_DATA_DIR": str(tmp_path),
           "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_METRICS_NAMESPACE": "Test", "LOG_LEVEL": "ERROR"}
    run = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    assert outcome == {"status": 200, "heavy": []}
