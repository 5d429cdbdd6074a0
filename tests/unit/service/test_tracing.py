"""X-Ray tracing patches the AWS SDK only.

Patching http.client as well (powertools' default) records every webhook URL, path included, in the traces, and
adds an X-Amzn-Trace-Id header to customers' webhook POSTs. The check runs where powertools really traces: in a
fresh process that looks like a Lambda runtime.
"""
import os
import subprocess
import sys


def test_only_botocore_is_patched_for_x_ray():
    env = {**os.environ, "AWS_LAMBDA_FUNCTION_NAME": "diarizer-worker", "LAMBDA_TASK_ROOT": "/var/task",
           "POWERTOOLS_TRACE_DISABLED": "false", "AWS_XRAY_CONTEXT_MISSING": "IGNORE_ERROR",
           "AWS_DEFAULT_REGION": "us-east-1"}
    code = ("import diarizer_service.observability as o, aws_xray_sdk.core.patcher as p; "
            "print(o.tracer.disabled, sorted(p._PATCHED_MODULES))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "['botocore']"], done.stdout
