"""The layering the project promises: the library imports neither Prefect nor Streamlit,
and Great Expectations (3 s to import) only when a batch is validated."""

import subprocess
import sys

from tests.helpers import ROOT

LIBRARY = ["cli", "clustering", "config", "contract", "db", "embedded", "errors", "features",
           "generate", "ingest", "registry", "reports", "scoring", "sqlexport", "training",
           "tree", "validation"]


def test_library_imports_no_orchestrator_ui_or_gx() -> None:
    code = ("import sys\n"
            + "".join(f"import segmentation.{m}\n" for m in LIBRARY)
            + "heavy = [m for m in ('prefect', 'streamlit', 'great_expectations')"
              " if m in sys.modules]\n"
              "print(','.join(heavy))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
