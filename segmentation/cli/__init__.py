"""The `segmentation` command, one module per verb group; each verb is a thin call into the
library. User mistakes print one line (`error: ...`) and exit 1; never a traceback."""

# each module registers its verbs on the one Typer app when imported
from segmentation.cli import (  # noqa: F401
    appserver,
    customers,
    data,
    db,
    demo,
    models,
    prefect,
    scoring,
)
from segmentation.cli.common import app
from segmentation.cli.main import main

__all__ = ["app", "main"]
