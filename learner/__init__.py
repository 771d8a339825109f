"""C3PO batching, losses, optimiser step, checkpoints and weight publication."""
