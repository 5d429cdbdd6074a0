"""One Logger, Metrics and Tracer for the whole service (powertools shares state between instances anyway).

Never log an API key, a webhook secret or audio: log `key_id` and `request_id` (appended as keys).
"""
from __future__ import annotations

import warnings

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

logger = Logger()
metrics = Metrics()
# Only AWS SDK calls: patching http.client too would put webhook URLs (a path may hold a secret, Slack-style) into
# traces and add an X-Amzn-Trace-Id header to every customer webhook POST.
tracer = Tracer(patch_modules=["botocore"])

# Status and error answers record no metric; that is expected, not worth a warning per invocation.
warnings.filterwarnings("ignore", message="No application metrics to publish", category=UserWarning)

__all__ = ["logger", "metrics", "tracer", "MetricUnit"]
