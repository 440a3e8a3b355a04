"""Container HEALTHCHECK: GET $MOLMOFLEET_HEALTH_URL (default: the Prometheus endpoint every long-running fleet
process serves on 9100) and exit 0 on a 2xx answer. Stdlib only; Kubernetes uses its own probes instead."""

import os
import sys
import urllib.request

URL = os.environ.get("MOLMOFLEET_HEALTH_URL", "http://127.0.0.1:9100/metrics")

try:
    with urllib.request.urlopen(URL, timeout=4) as response:
        sys.exit(0 if 200 <= response.status < 300 else 1)
except Exception as e:  # any failure is "unhealthy"; say why in `docker inspect`
    print(f"unhealthy: {URL}: {e}", file=sys.stderr)
    sys.exit(1)
