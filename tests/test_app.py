"""The Streamlit app against a real database (AppTest, no browser)."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from segmentation import scoring
from segmentation.explain import SHARES
from tests.helpers import load_batch, open_page, register_champion

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app" / "app.py")


@pytest.fixture
def scored_db(db: str, trained, models_dir: Path, synthetic_csv: Path,
              monkeypatch: pytest.MonkeyPatch) -> str:
    load_batch(db, synthetic_csv)
    model = register_champion(db, trained, models_dir, "m-app-1")
    scoring.score_customers(db, model, mode="full")
    monkeypatch.setenv("SEGMENTATION_DATABASE_URL", db)
    return db


@pytest.fixture(autouse=True)
def fresh_caches() -> None:
    """The app caches summaries per URL; every test gets its own view of the database."""
    import streamlit as st

    from streamlit_app import common

    st.cache_data.clear()
    st.cache_resource.clear()
    common._MODELS.clear()  # loaded once per process: each test registers its own files


def run_app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def test_empty_database_says_what_to_run(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENTATION_DATABASE_URL", db)
    at = run_app()
    assert any("run `segmentation score`" in i.value for i in at.info)


def test_unreachable_database_is_a_page_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENTATION_DATABASE_URL",
                       "postgresql+psycopg://u:pw-secret@127.0.0.1:1/none")
    at = run_app()
    assert at.error and "not reachable" in at.error[0].value
    assert "pw-secret" not in at.error[0].value


def test_overview_lookup_and_predict(scored_db: str, trained, synthetic_frame) -> None:
    at = run_app()
    assert at.dataframe, "segment table missing"
    customer = str(synthetic_frame["customer_id"].iloc[0])
    expected = int(trained.model.predict(synthetic_frame.iloc[[0]])[0])
    open_page(at, "lookup")
    at.text_input(key="lookup_id").set_value(customer).run()
    texts = " ".join(m.value for m in at.markdown)
    assert f"Segment {expected}: {trained.model.names[expected]}" in texts
    assert f"Why {trained.model.names[expected]}:" in texts
    assert " vs typical " in texts and "pc1" not in texts and "pc2" not in texts
    at.text_input(key="lookup_id").set_value("no-such-id").run()
    assert any("No scored customer" in w.value for w in at.warning)
    open_page(at, "predict")
    at.button[0].click().run()  # the form's submit button
    assert at.success and at.success[0].value.startswith("Segment ")


def test_invalid_form_input_names_the_field_and_predicts_nothing(scored_db: str) -> None:
    at = open_page(run_app(), "predict")
    at.number_input(key="f_purchases_frequency").set_value(170.0)
    at.number_input(key="f_tenure").set_value(3.0)
    at.button[0].click().run()
    errors = " ".join(e.value for e in at.error)
    assert "months with purchases must be between 0 and 100 %" in errors
    assert "tenure (months) must be between 6 and 12" in errors
    assert not at.success


def test_models_page_lists_validation_runs(scored_db: str) -> None:
    from segmentation.db import sa_engine
    from streamlit_app.data import scoring_runs

    at = open_page(run_app(), "runs")
    headers = [h.value for h in at.header]
    assert "Validation runs" in headers and "Scoring runs" in headers
    runs = scoring_runs(sa_engine(scored_db))
    assert runs["published_by"].iloc[-1] == "swap"  # the first run wrote every row


def test_sizes_over_runs_follow_the_history(scored_db: str) -> None:
    from segmentation.db import sa_engine
    from streamlit_app.data import segment_sizes_by_run
    from tests.helpers import query

    sizes = segment_sizes_by_run(sa_engine(scored_db))
    current = dict(query(scored_db, "SELECT segment_id, count(*) FROM customer_segments"
                                    " GROUP BY 1"))
    last = sizes.sort_values("started_at").groupby("segment_id")["customers"].last()
    assert {int(k): int(v) for k, v in last.items()} == current


def test_a_rename_shows_at_once_in_every_tab(scored_db: str, trained, synthetic_frame) -> None:
    """Overview, lookup and prediction name the segment as ops renamed it, without waiting
    for the app's cache or a scoring run."""
    from segmentation import registry
    from segmentation.db import connection

    at = run_app()  # the overview is cached before the rename
    customer = str(synthetic_frame["customer_id"].iloc[0])
    segment = int(trained.model.predict(synthetic_frame.iloc[[0]])[0])
    with connection(scored_db) as conn:
        registry.rename_segment(conn, segment, "Renamed by ops")
    at.run()
    overview = at.dataframe[0].value
    assert "Renamed by ops" in set(overview["name"])
    open_page(at, "lookup")
    at.text_input(key="lookup_id").set_value(customer).run()
    assert f"Segment {segment}: Renamed by ops" in " ".join(m.value for m in at.markdown)
    open_page(at, "predict")
    for feature in synthetic_frame.columns.drop("customer_id"):  # predict that customer
        value = synthetic_frame.iloc[0][feature]
        if value == value:  # NaN stays at the form's default; shares typed in percent
            at.number_input(key=f"f_{feature}").set_value(
                float(value) * (100 if feature in SHARES else 1))
    at.button[0].click().run()
    assert at.success[0].value == f"Segment {segment}: Renamed by ops"


def test_an_unusable_model_is_named_not_blamed_on_the_database(scored_db: str,
                                                              models_dir: Path) -> None:
    """The champion's file is refused (here: an earlier release's pickle): the page says so,
    instead of calling the database unreachable."""
    from tests.segmentation.test_registry import as_earlier_release

    folder = as_earlier_release(scored_db, "m-app-1", models_dir)
    (folder / "model.skops").rename(folder / "model.joblib")
    at = run_app()  # the overview reads the run's summary: it needs no model file
    assert not at.error
    at.switch_page("views/predict.py").run()  # a prediction needs the model itself
    assert at.error and "The champion model cannot be used" in at.error[0].value
    assert "pickle from an earlier release" in at.error[0].value


def vega_specs(at: AppTest) -> list[dict]:
    """The Vega-Lite specs of the charts on the page, as the browser gets them."""
    import json

    return [json.loads(chart.proto.spec) for chart in at.get("vega_lite_chart")]


def every_text(at: AppTest) -> str:
    """Everything the page writes, as one string."""
    parts = [e.value for kind in ("markdown", "caption", "text", "info", "warning", "error",
                                  "success", "header", "subheader", "title")
             for e in getattr(at, kind)]
    return " ".join(str(p) for p in parts)


def test_no_page_shows_the_database_url(scored_db: str) -> None:
    from sqlalchemy.engine import make_url

    name = make_url(scored_db).database
    at = run_app()
    for page in ("overview", "segments", "lookup", "predict", "runs", "models"):
        open_page(at, page)
        shown = every_text(at)
        assert "postgresql" not in shown and str(name) not in shown, page


def test_a_pasted_id_is_trimmed_and_an_unknown_one_is_plain_text(scored_db: str,
                                                                 synthetic_frame) -> None:
    at = open_page(run_app(), "lookup")
    customer = str(synthetic_frame["customer_id"].iloc[0])
    at.text_input(key="lookup_id").set_value(f"  {customer} ").run()
    assert any(t.value == f"customer {customer}" for t in at.text)
    at.text_input(key="lookup_id").set_value("**bold**").run()
    assert any("No scored customer" in w.value for w in at.warning)
    assert any(t.value == "**bold**" for t in at.text)  # as typed, not rendered bold
    assert all("bold" not in w.value for w in at.warning)


def test_the_segment_page_is_headed_by_its_name_and_says_whom_it_read(scored_db: str) -> None:
    at = open_page(run_app(), "segments")
    chosen = at.selectbox(key="segment_pick").value
    assert at.header[0].value == chosen
    size = int(str(at.metric[0].value).replace(",", ""))
    assert any(f"among all its {size:,} members" in c.value for c in at.caption)


def test_the_heatmap_is_centred_on_zero_and_readable(scored_db: str) -> None:
    at = run_app()
    heatmap = next(s for s in vega_specs(at) if "std. dev." in str(s))
    text = str(heatmap)
    domain = next(layer["encoding"]["color"]["scale"]["domain"] for layer in heatmap["layer"]
                  if layer["mark"]["type"] == "rect")
    assert domain[0] == -domain[1] and domain[1] > 0
    assert "'white'" in text  # dark cells carry white text


def test_the_form_speaks_as_lookup_does(scored_db: str) -> None:
    """Shares as percentages (as Lookup shows them), one pair of parentheses per label,
    and a broken field named in words with its range."""
    at = open_page(run_app(), "predict")
    assert at.number_input(key="f_tenure").label == "tenure (months, 6 to 12)"
    assert at.number_input(key="f_purchases_frequency").label == \
        "months with purchases (0 to 100 %)"
    assert at.number_input(key="f_balance").label == "balance (0 or more)"
    assert 0 <= at.number_input(key="f_purchases_frequency").value <= 100
    at.number_input(key="f_purchases_frequency").set_value(170.0)
    at.button[0].click().run()
    assert [e.value for e in at.error] == ["months with purchases must be between 0 and 100 %"]
    at.number_input(key="f_purchases_frequency").set_value(50.0)
    at.button[0].click().run()
    assert at.success
    scatter = next(s for s in vega_specs(at) if "diamond" in str(s))
    shapes = [layer["encoding"]["shape"] for layer in scatter["layer"]
              if "shape" in layer.get("encoding", {})]
    assert shapes and shapes[0].get("legend", {}) is not None  # the diamond is in a legend


def test_the_overview_shows_what_is_published_and_a_pending_rescore(
        scored_db: str, trained, models_dir: Path) -> None:
    """Between `models promote` and the next night the overview names the segments as the
    model that published them, and says a rescore is pending."""
    import dataclasses

    from segmentation import registry
    from segmentation.db import connection

    flipped = dataclasses.replace(trained.model, version="m-app-2",
                                  names={k: f"New {v}" for k, v in trained.model.names.items()})
    saved = registry.package_version(flipped, trained.metrics, trained.sizes)
    with connection(scored_db) as conn:
        registry.register_version(conn, saved, flipped, trained.metrics, trained.sizes, None)
        registry.promote(conn, "m-app-2")
    at = run_app()
    table = at.dataframe[0].value
    assert len(table) == len(set(table["segment_id"]))  # each segment once
    assert not any(str(n).startswith("New ") for n in table["name"])
    assert any("has not scored the customers yet" in i.value for i in at.info)


def statements_of(db: str, run) -> list[str]:  # type: ignore[no-untyped-def]
    """The statements PostgreSQL ran for the app while `run()` ran (pg_stat_statements is
    not needed: the app's own engine and lookup pool are wrapped)."""
    import psycopg

    seen: list[str] = []
    real = psycopg.Cursor.execute

    def keep(self, query, params=None, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(query if isinstance(query, str) else query.as_string(self.connection))
        return real(self, query, params, **kwargs)

    psycopg.Cursor.execute = keep  # type: ignore[method-assign]
    try:
        run()
    finally:
        psycopg.Cursor.execute = real  # type: ignore[method-assign]
    return seen


def test_no_page_scans_the_published_table(scored_db: str, synthetic_frame) -> None:
    """Every page reads the run's summary or one customer by key: no statement a page
    sends reads segment_assignments (or a view over it) but by customer id."""
    import re

    from segmentation.db import connection

    at = run_app()
    customer = str(synthetic_frame["customer_id"].iloc[0])
    for page in ("overview", "segments", "lookup", "predict", "runs", "models"):
        def visit(page: str = page) -> None:
            import streamlit as st

            st.cache_data.clear()  # a first visit: nothing from the cache
            open_page(at, page)
            if page == "lookup":
                at.text_input(key="lookup_id").set_value(customer).run()
            if page == "predict":
                at.button[0].click().run()

        sent = statements_of(scored_db, visit)
        assert sent, page
        published = [s for s in sent if re.search(
            r"segment_assignments|customer_segments|segment_summary\b|segment_movement"
            r"|customer_first_segments|segment_membership", s)]
        for statement in published:  # only by key: EXPLAIN shows no sequential scan
            with connection(scored_db) as conn:
                if "%s" in statement or ":" in statement:
                    assert "customer_id = " in statement, (page, statement)
                    continue
                plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + statement))
                assert "Seq Scan on segment_assignments" not in plan, (page, statement)


def test_the_models_page_shows_the_training_sample(scored_db: str) -> None:
    """Beside the k selection: the training sample's feature distributions and their
    correlation heatmap, centred on zero, read from the registry (no model file)."""
    at = open_page(run_app(), "models")
    subheaders = [h.value for h in at.subheader]
    assert "The training sample: each feature's distribution" in subheaders
    assert "The training sample: how the features move together" in subheaders
    heat = next(s for s in vega_specs(at) if "correlation" in str(s))
    domain = next(layer["encoding"]["color"]["scale"]["domain"] for layer in heat["layer"]
                  if layer["mark"]["type"] == "rect")
    assert domain == [-1, 1]


def test_the_retrain_report_draws_the_training_sample(trained) -> None:
    from segmentation.reports import retrain_markdown

    report = retrain_markdown(trained, "champion")
    assert "## The training sample" in report
    assert "![feature distributions](data:image/png;base64," in report
    assert "![feature correlations](data:image/png;base64," in report
