"""Math and code verifiers, the sandbox, reward workers and the scoring HTTP server."""
