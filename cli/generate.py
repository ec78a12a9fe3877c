"""`vaekit sample` and `interpolate`: new images from the model, drawn from the prior or decoded
between two images' codes, written as one PNG grid."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vaekit_cli.codec import DeviceOpt, ModelArg, Overwrite
from vaekit_cli.output import Device, console, load_model, shown, tidy_outputs


@tidy_outputs('out')
def sample(
    model: ModelArg,
    n: Annotated[int, typer.Option("-n", help="Number of images (at most 10,000, and 64 Mi pixels in all).", min=1)] = 64,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG grid to write.")] = Path("samples.png"),
    temperature: Annotated[float, typer.Option(help="Scales the prior's standard deviation.", min=0.0)] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed for the draws (0 or more).", min=0)] = 0,
    overwrite: Overwrite = False,
    device: DeviceOpt = Device.auto,
) -> None:
    """Draw images from the prior N(0, temperature² I) and save them as a grid."""
    from vaekit.codes import check_grid, check_grid_output, write_grid

    check_grid_output(out, overwrite, [model])  # a bad or unwritable -o: said before the model is loaded
    m = load_model(model, device)
    check_grid(n, m.info.image_size)  # before drawing: the grid is held in memory at once
    inputs = [m.info.source]  # never into the run directory, even with --overwrite
    check_grid_output(out, overwrite, inputs)
    path = write_grid(m.sample(n, temperature, seed), out, ncol=8, overwrite=overwrite, inputs=inputs)
    console.print(f"wrote {n} samples (temperature {temperature}, seed {seed}) to {shown(path)}", highlight=False, soft_wrap=True)


@tidy_outputs('out')
def interpolate(
    model: ModelArg,
    a: Annotated[Path, typer.Argument(help="First image.", exists=True, dir_okay=False)],
    b: Annotated[Path, typer.Argument(help="Second image.", exists=True, dir_okay=False)],
    n: Annotated[int, typer.Option("-n", help="Steps, both ends included (at most 10,000, and 64 Mi pixels in all).",
                                   min=2)] = 8,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG strip to write.")] = Path("path.png"),
    overwrite: Overwrite = False,
    device: DeviceOpt = Device.auto,
) -> None:
    """Decode evenly spaced points between two images' posterior means, as one strip."""
    from vaekit.codes import check_grid, check_grid_output, interpolate as walk, write_grid

    check_grid_output(out, overwrite, [a, b, model])  # a bad or unwritable -o: said before the model is loaded
    m = load_model(model, device)
    check_grid(n, m.info.image_size)
    inputs = [a, b, m.info.source]  # the two images and the run are never replaced, even with --overwrite
    check_grid_output(out, overwrite, inputs)
    path = write_grid(walk(m, a, b, n), out, ncol=n, overwrite=overwrite, inputs=inputs)
    console.print(f"wrote an interpolation of {n} steps from {shown(a.name)} to {shown(b.name)} to {shown(path)}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    for command in (sample, interpolate):
        app.command(command.__name__)(command)
