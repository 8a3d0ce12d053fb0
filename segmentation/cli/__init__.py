"""The `segmentation` command, one module per verb group; each verb is a thin call into the
library. User mistakes print one line (`error: ...`) and exit 1; never a traceback."""

from segmentation.cli import app as _app_verb  # noqa: F401  (registers `segmentation app`)
from segmentation.cli import customers, data, db, demo, models, prefect, scoring  # noqa: F401
from segmentation.cli.common import app
from segmentation.cli.main import main

__all__ = ["app", "main"]
