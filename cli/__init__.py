"""The `ringrl` command line."""
