"""Container health probe: exit 0 when GET $HEALTHCHECK_URL (or the URL given as argument) answers 2xx.

One image runs every part on a different port, so the probe reads its URL from the environment
instead of hard-coding one; stdlib only, because the runtime image carries no curl. /healthz is
open; /readyz needs the API token, sent when $HEALTHCHECK_TOKEN_FILE names a file holding it (a
Kubernetes readiness probe runs `ringrl-healthcheck http://127.0.0.1:PORT/readyz` that way).
"""

import os
import sys
import urllib.request

URL = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("HEALTHCHECK_URL", "http://127.0.0.1:8000/healthz")
TOKEN_FILE = os.environ.get("HEALTHCHECK_TOKEN_FILE", "")

try:
    request = urllib.request.Request(URL)
    if TOKEN_FILE:
        with open(TOKEN_FILE) as fh:
            request.add_header("Authorization", f"Bearer {fh.read().strip()}")
    with urllib.request.urlopen(request, timeout=4) as resp:
        sys.exit(0 if 200 <= resp.status < 300 else 1)
except Exception as exc:  # any failure to answer is "unhealthy"; say why (never the token) in `docker inspect`
    print(f"{URL}: {exc}", file=sys.stderr)
    sys.exit(1)
