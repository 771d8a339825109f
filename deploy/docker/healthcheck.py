"""Container health probe: exit 0 when GET $HEALTHCHECK_URL answers 2xx.

One image runs every part on a different port, so the probe reads its URL from the environment
instead of hard-coding one; stdlib only, because the runtime image carries no curl.
"""

import os
import sys
import urllib.request

URL = os.environ.get("HEALTHCHECK_URL", "http://127.0.0.1:8000/healthz")

try:
    with urllib.request.urlopen(URL, timeout=4) as resp:
        sys.exit(0 if 200 <= resp.status < 300 else 1)
except Exception as exc:  # any failure to answer is "unhealthy"; say why in `docker inspect`
    print(f"{URL}: {exc}", file=sys.stderr)
    sys.exit(1)
