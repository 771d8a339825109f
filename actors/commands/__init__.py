"""One module per `ringrl` sub-command; each defines `register(app: typer.Typer) -> None`.

A `serve` command gets its group from `actors.cli.serve_group()`.
"""
