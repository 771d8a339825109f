"""The run: `ringrl train` and its parts (stages, tasks, checkpoint selection, eval, plots, local Redis)."""
