"""Ray actors hosting the parts in embedded mode; each is a thin wrapper over a service."""
