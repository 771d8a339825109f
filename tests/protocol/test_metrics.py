from __future__ import annotations

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Counter

from protocol.metrics import mount_observability, serve_observability


def test_standalone_server_serves_metrics_and_health() -> None:
    reg = CollectorRegistry()
    Counter("ringrl_things", "things done", registry=reg).inc(3)
    state = {"ok": True}
    server = serve_observability(reg, lambda: dict(state))
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert "ringrl_things_total 3.0" in httpx.get(f"{base}/metrics").text
        assert httpx.get(f"{base}/healthz").json() == {"ok": True, "ready": True}
        state["ready"] = False  # alive but not able to serve: liveness 200, readiness 503
        assert httpx.get(f"{base}/healthz").status_code == 200
        assert httpx.get(f"{base}/readyz").status_code == 503
        state["ok"] = False
        assert httpx.get(f"{base}/healthz").status_code == 503
        assert httpx.get(f"{base}/nope").status_code == 404
        # prometheus_client's own app answers /metrics: format negotiation comes with it.
        om = httpx.get(f"{base}/metrics", headers={"Accept": "application/openmetrics-text"})
        assert om.headers["content-type"].startswith("application/openmetrics-text") and "# EOF" in om.text
    finally:
        server.shutdown()
        server.server_close()


def test_fastapi_mount_reports_failing_probe() -> None:
    app = FastAPI()
    reg = CollectorRegistry()
    Counter("ringrl_x", "x", registry=reg)

    def broken() -> dict:
        raise RuntimeError("engine gone")

    mount_observability(app, reg, broken)
    client = TestClient(app)
    assert "ringrl_x_total 0.0" in client.get("/metrics").text
    r = client.get("/healthz")
    assert r.status_code == 503 and "engine gone" in r.json()["error"]
