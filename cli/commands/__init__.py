"""One module per `ringrl` sub-command; each defines `register(app, serve) -> None`, where `serve`
is the `ringrl serve <part>` group. Commands never import cli.app (no cycle): errors go through
cli.errors.fail."""
