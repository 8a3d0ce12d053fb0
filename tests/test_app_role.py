"""The app's own role: it reads what it shows, writes nothing, and works with its URL alone."""

from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from segmentation import scoring
from segmentation.db import APP_ROLE, conninfo, set_role_password
from streamlit_app import data
from tests.helpers import load_batch, open_page, query, register_champion

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app" / "app.py")
PASSWORD = "app-only-pw"


@pytest.fixture
def app_url(db: str, trained, models_dir: Path, synthetic_csv: Path) -> str:
    """Scored customers, and a login as segmentation_app (set as `db migrate` sets it)."""
    load_batch(db, synthetic_csv)
    scoring.score_customers(db, register_champion(db, trained, models_dir, "m-role-1"),
                            mode="full")
    set_role_password(db, APP_ROLE, PASSWORD)
    return make_url(db).set(username=APP_ROLE, password=PASSWORD) \
        .render_as_string(hide_password=False)


@pytest.mark.parametrize("statement", [
    "SELECT * FROM customers_quarantine",
    "SELECT gx_summary FROM validation_runs",  # per-rule examples: ids and raw values
    "SELECT * FROM export_log",
    "INSERT INTO segment_name_overrides (segment_id, name) VALUES (1, 'x')",
    "UPDATE model_versions SET path = '/tmp'",  # the loader's path: not the app's to set
    "DELETE FROM segment_assignments",
    "INSERT INTO export_log (exported_by, segments, rows) VALUES ('x', '{1}', 1)",
    "TRUNCATE customers",
    "CREATE TABLE app_scratch (x int)",
])
def test_the_app_role_writes_nothing_and_reads_no_raw_rows(app_url: str,
                                                           statement: str) -> None:
    with psycopg.connect(conninfo(app_url), autocommit=True) as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)


def test_an_owner_url_is_switched_to_the_app_role(db: str, app_url: str) -> None:
    """Given only the owner's URL, the engine and the lookup pool act as segmentation_app."""
    engine = data.app_engine(db, APP_ROLE)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT current_user")).scalar() == APP_ROLE
        with pytest.raises(Exception, match="permission denied"):
            conn.execute(text("SELECT * FROM customers_quarantine"))
    pool = data.lookup_pool(db, max_size=4, role=APP_ROLE)
    try:
        with pool.connection() as conn:
            assert conn.execute("SELECT current_user").fetchone() == {"current_user": APP_ROLE}
    finally:
        pool.close()


def test_the_app_works_with_its_own_url_alone(app_url: str, trained, synthetic_frame,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """No owner URL in the app's environment: overview, lookup and a prediction work."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_data.clear()
    st.cache_resource.clear()
    monkeypatch.delenv("SEGMENTATION_DATABASE_URL", raising=False)
    monkeypatch.setenv("SEGMENTATION_APP_DATABASE_URL", app_url)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception and not at.error, (at.exception, at.error)
    assert len(at.dataframe[0].value) == 4  # the segments
    customer = str(synthetic_frame["customer_id"].iloc[0])
    expected = int(trained.model.predict(synthetic_frame.iloc[[0]])[0])
    open_page(at, "lookup")
    at.text_input(key="lookup_id").set_value(customer).run()
    assert f"Segment {expected}: " in " ".join(m.value for m in at.markdown)
    open_page(at, "predict")
    at.button[0].click().run()
    assert at.success and at.success[0].value.startswith("Segment ")


def test_exports_are_off_by_default_and_recorded_when_allowed(app_url: str, db: str,
                                                              monkeypatch) -> None:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_data.clear()
    st.cache_resource.clear()
    monkeypatch.setenv("SEGMENTATION_APP_DATABASE_URL", app_url)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.multiselect, "no export picker unless exports are allowed"
    assert any("Exporting customers is off" in c.value for c in at.caption)
    monkeypatch.setenv("SEGMENTATION_APP_ALLOW_EXPORT", "true")
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    count, name = query(db, "SELECT count(*), segment_name FROM customer_segments"
                            " WHERE segment_id = 2 GROUP BY 2")[0]
    at.multiselect(key="export_overview").set_value([name]).run()  # picked by name
    at.button(key="export_overview_go").click().run()
    assert query(db, "SELECT exported_by, segments, rows FROM export_log") == \
        [("anonymous (no login configured)", [2], count)]


def test_with_auth_configured_nothing_shows_before_sign_in(app_url: str, monkeypatch) -> None:
    """An [auth] section (OIDC) in the secrets: a visitor sees a sign-in button and no
    segment, customer or model."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_data.clear()
    st.cache_resource.clear()
    monkeypatch.setenv("SEGMENTATION_APP_DATABASE_URL", app_url)
    at = AppTest.from_file(APP, default_timeout=60)
    at.secrets["auth"] = {"redirect_uri": "http://localhost:8501/oauth2callback",
                          "cookie_secret": "x" * 32, "client_id": "segments",
                          "client_secret": "s", "server_metadata_url":
                          "https://login.example.invalid/.well-known/openid-configuration"}
    at.run()
    assert not at.exception, at.exception
    assert [b.label for b in at.button] == ["Log in"]
    assert any("Sign in" in i.value for i in at.info)
    assert not at.dataframe and not at.tabs  # nothing of the data before sign-in
    assert not any("Lookup" in str(m.value) for m in at.markdown)
