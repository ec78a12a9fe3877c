"""Commands of this group are registered here (filled in by their issue)."""

import typer


def register(app: typer.Typer) -> None:
    return None
