"""The layering the project promises: the library imports neither Prefect nor Streamlit,
and Great Expectations (3 s to import) only when a batch is validated."""

import pkgutil
import subprocess
import sys

import segmentation
from tests.helpers import ROOT

# every module of the package, as it is on disk: a new module is checked without a list
LIBRARY = sorted(m.name for m in pkgutil.iter_modules(segmentation.__path__))


def test_the_module_list_is_the_package() -> None:
    on_disk = {p.stem for p in (ROOT / "segmentation").glob("*.py") if p.stem != "__init__"}
    on_disk |= {p.parent.name for p in (ROOT / "segmentation").glob("*/__init__.py")}
    assert set(LIBRARY) == on_disk and {"reading", "rebuild", "publishing", "runs",
                                        "privacy", "drift", "accepting", "cli", "csvfile",
                                        "landing", "structure"} <= set(LIBRARY)


def test_the_cli_is_one_module_per_verb_group() -> None:
    groups = {p.stem for p in (ROOT / "segmentation" / "cli").glob("*.py")}
    assert {"db", "data", "scoring", "models", "customers", "prefect", "appserver",
            "demo"} <= groups
    for path in (ROOT / "segmentation" / "cli").glob("*.py"):
        assert len(path.read_text().splitlines()) < 250, path  # one concern each


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
