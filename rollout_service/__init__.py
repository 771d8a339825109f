"""Generation engines (vLLM), the rollout HTTP server, streaming groups into Redis."""
