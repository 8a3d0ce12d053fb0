"""The Streamlit app against a real database (AppTest, no browser)."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from segmentation import scoring
from tests.helpers import load_batch, register_champion

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

    st.cache_data.clear()
    st.cache_resource.clear()


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
    at.text_input(key="lookup_id").set_value(customer).run()
    texts = " ".join(m.value for m in at.markdown)
    assert f"Segment {expected}: {trained.model.names[expected]}" in texts
    assert f"Why {trained.model.names[expected]}:" in texts
    assert " vs typical " in texts and "pc1" not in texts and "pc2" not in texts
    at.text_input(key="lookup_id").set_value("no-such-id").run()
    assert any("No scored customer" in w.value for w in at.warning)
    at.button[0].click().run()  # the form's submit button
    assert at.success and at.success[0].value.startswith("Segment ")


def test_invalid_form_input_names_the_field_and_predicts_nothing(scored_db: str) -> None:
    at = run_app()
    at.number_input(key="f_purchases_frequency").set_value(1.7)
    at.number_input(key="f_tenure").set_value(3.0)
    at.button[0].click().run()
    errors = " ".join(e.value for e in at.error)
    assert "purchases_frequency must satisfy: purchases_frequency within [0, 1]" in errors
    assert "tenure must satisfy: tenure within [6, 12]" in errors
    assert not at.success


def test_models_page_lists_validation_runs(scored_db: str) -> None:
    from segmentation.db import sa_engine
    from streamlit_app.data import scoring_runs

    at = run_app()
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
    at.text_input(key="lookup_id").set_value(customer).run()
    assert f"Segment {segment}: Renamed by ops" in " ".join(m.value for m in at.markdown)
    for feature in synthetic_frame.columns.drop("customer_id"):  # predict that customer
        value = synthetic_frame.iloc[0][feature]
        if value == value:  # NaN stays at the form's default
            at.number_input(key=f"f_{feature}").set_value(float(value))
    at.button[0].click().run()
    assert at.success[0].value == f"Segment {segment}: Renamed by ops"


def test_an_unusable_model_is_named_not_blamed_on_the_database(scored_db: str,
                                                              models_dir: Path) -> None:
    """The champion's file is refused (here: an earlier release's pickle): the page says so,
    instead of calling the database unreachable."""
    model = models_dir / "m-app-1" / "model.skops"
    model.rename(model.with_name("model.joblib"))
    at = run_app()
    assert at.error and "The champion model cannot be used" in at.error[0].value
    assert "pickle from an earlier release" in at.error[0].value
