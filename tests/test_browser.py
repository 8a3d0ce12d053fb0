"""A real browser: `streamlit run` against a scored test database, driven by Chromium."""

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from segmentation import scoring
from segmentation.explain import SHARES
from streamlit_app.common import field_label
from tests.helpers import (
    CHROMIUM_ARGS,
    ROOT,
    chromium_or_skip,
    free_port,
    load_batch,
    register_champion,
    wait_for_http,
)

ARTIFACTS = ROOT / "test-artifacts"
pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def app_url(db: str, trained, models_dir: Path, synthetic_csv: Path):
    load_batch(db, synthetic_csv)
    model = register_champion(db, trained, models_dir, "m-browser-1")
    scoring.score_customers(db, model, mode="full")
    port = free_port()
    env = {**os.environ, "SEGMENTATION_DATABASE_URL": db,
           "SEGMENTATION_MODELS_DIR": str(models_dir)}
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app" / "app.py"),
         "--server.port", str(port), "--server.headless", "true",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
         "--client.toolbarMode", "viewer"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/_stcore/health")
        yield url
    finally:
        server.terminate()
        server.wait(10)


@contextmanager
def browser_page(name: str) -> Iterator:  # type: ignore[type-arg]
    """A Chromium page; its screenshot is saved under test-artifacts/ if the test fails."""
    from playwright.sync_api import sync_playwright

    executable = chromium_or_skip()
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True,
                                    args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2400})
        try:
            yield page
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / f"{name}-failed.png"))
            raise
        finally:
            browser.close()


def what_if_customer(trained, frame) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """A complete customer whose segment differs from the form's defaults (the training
    medians), so a form that ignored what was typed would show the wrong segment."""
    from segmentation.contract import check_values
    from segmentation.features import FEATURES

    medians = pd.DataFrame([trained.metrics["medians"]])
    default_segment = int(trained.model.predict(medians)[0])
    for _, row in frame.dropna(subset=list(FEATURES)).iterrows():
        values = {f: round(float(row[f]), 2) for f in FEATURES}
        if (not check_values(values) and values["tenure"] >= 6
                and int(trained.model.predict(pd.DataFrame([values]))[0]) != default_segment):
            return values
    raise AssertionError("every synthetic customer falls in the defaults' segment")


def test_lookup_and_predict_in_chromium(app_url: str, trained, synthetic_frame) -> None:
    from playwright.sync_api import expect

    customer = str(synthetic_frame["customer_id"].iloc[0])
    segment = int(trained.model.predict(synthetic_frame.iloc[[0]])[0])
    typed = what_if_customer(trained, synthetic_frame)
    predicted = int(trained.model.predict(pd.DataFrame([typed]))[0])
    with browser_page("lookup-predict") as page:
        page.goto(app_url)
        expect(page.get_by_text("Customer segments").first).to_be_visible(timeout=60_000)
        page.get_by_role("link", name="Lookup", exact=True).click()
        box = page.get_by_label("Customer id")
        box.fill(customer)
        box.press("Enter")
        expect(page.get_by_text(f"Segment {segment}: {trained.model.names[segment]}")) \
            .to_be_visible(timeout=30_000)
        expect(page.get_by_text(f"customer {customer}", exact=True)).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "lookup.png"), full_page=True)
        page.get_by_role("link", name="Predict", exact=True).click()
        for feature, value in typed.items():  # every field typed in: the form must use them
            field = page.get_by_label(re.compile(rf"^{re.escape(field_label(feature))}$"))
            field.fill(f"{value * 100:g}" if feature in SHARES else f"{value:g}")
            field.press("Tab")
        page.get_by_role("button", name="Predict").click()
        expect(page.get_by_text(f"Segment {predicted}: {trained.model.names[predicted]}")
               .filter(visible=True)) \
            .to_be_visible(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "predict.png"), full_page=True)


def test_prefect_ui_shows_the_demos_runs(db: str, tmp_path: Path) -> None:
    """The demo's last line is the Prefect UI of the kept server, and its runs are there."""
    from playwright.sync_api import expect

    from segmentation.prefect_server import stop_prefect_server

    chromium_or_skip()  # before the demo: skip at once without a browser
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(SEGMENTATION_DATABASE_URL=db, SEGMENTATION_HOME=str(home),
               SEGMENTATION_MODELS_DIR=str(tmp_path / "models"))
    try:
        demo = subprocess.run([sys.executable, "-m", "segmentation.cli", "demo", "--rows", "2000"],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert demo.returncode == 0, demo.stderr[-2000:]
        runs_line = next(line for line in demo.stdout.splitlines()
                         if line.startswith("see the runs:"))
        runs_url = runs_line.split()[3]
        assert runs_url.startswith("http://127.0.0.1:") and runs_url.endswith("/runs")
        with browser_page("prefect-runs") as page:
            page.goto(runs_url)
            for flow_name in ("retrain", "nightly-scoring"):  # the runs the demo just made
                expect(page.get_by_text(flow_name, exact=True).first).to_be_visible(
                    timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "prefect-runs.png"))
    finally:
        stop_prefect_server(home)


def test_marketing_reads_names_reasons_segment_pages_and_runs(app_url: str, db: str, trained,
                                                             synthetic_frame) -> None:
    """What a marketing analyst sees: names (not ids) in the overview, a reason in customer
    terms with no principal components, a page per segment, and the runs as an ops log."""
    from playwright.sync_api import expect

    from tests.helpers import query

    names = dict(query(db, "SELECT segment_id, segment_name FROM customer_segments"
                           " GROUP BY 1, 2"))
    counts = dict(query(db, "SELECT segment_name, count(*) FROM customer_segments GROUP BY 1"))
    with browser_page("marketing") as page:
        page.goto(app_url)
        expect(page.get_by_text("Customer segments").first).to_be_visible(timeout=60_000)
        heatmap = page.get_by_role("img").filter(has_text="std. dev.")
        expect(heatmap).to_be_attached(timeout=30_000)  # its axis names the segments
        charts = page.locator("main").aria_snapshot()  # what a screen reader hears
        for name in names.values():
            assert name in charts, (name, charts[:500])
        page.get_by_role("link", name="Lookup", exact=True).click()
        customer = str(synthetic_frame["customer_id"].iloc[3])
        box = page.get_by_label("Customer id")
        box.fill(customer)
        box.press("Enter")
        why = page.get_by_text(re.compile(r"^Why .+: what places this customer here"))
        expect(why).to_be_visible(timeout=30_000)
        reasons = page.locator("li").filter(has_text=" vs typical ")
        expect(reasons.first).to_be_visible()
        text = " ".join(reasons.all_inner_texts())
        assert not re.search(r"\bpc\d|z\(|_", text), text  # customer terms only
        page.get_by_role("link", name="Segments", exact=True).click()
        chosen = names[max(names)]
        page.get_by_text("Segment", exact=True).first.wait_for()
        page.locator("[data-testid='stSelectbox']").first.click()
        page.get_by_role("option", name=chosen).click()
        expect(page.get_by_text("Who they are")).to_be_visible(timeout=30_000)
        expect(page.get_by_text(f"{counts[chosen]:,}", exact=True).first).to_be_visible()
        expect(page.get_by_text("Typical customers")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "segment-page.png"))
        page.get_by_role("link", name="Runs", exact=True).click()
        expect(page.get_by_text("Scoring runs", exact=True)).to_be_visible(timeout=30_000)
        run_id = query(db, "SELECT run_id::text FROM scoring_runs")[0][0]
        table = page.locator("main [data-testid='stTable']").first
        expect(table.get_by_text(run_id[:8], exact=True)).to_be_visible(timeout=30_000)
        rows = query(db, "SELECT rows_in FROM scoring_runs")[0][0]
        expect(table.get_by_text(f"{rows:,}", exact=True).first).to_be_visible()
        assert "{" not in table.inner_text()  # no byte dictionaries
        page.screenshot(path=str(ARTIFACTS / "runs-page.png"))
