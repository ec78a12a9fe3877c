"""vaekit's command line (installed as the `vaekit_cli` package): a thin Typer adapter."""
