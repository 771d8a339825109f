"""Ray actors hosting the parts, and the driver that wires a whole run."""
