"""Abuse: hostile strings are data, never code, in the app's lookup too."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from segmentation import scoring
from tests.helpers import ROOT, load_batch, open_page, query, register_champion

pytestmark = pytest.mark.reliability
HOSTILE = ["'; DROP TABLE customer_segments; --", "\" OR 1=1 --", "客户 🙂", "x" * 5_000,
           "%", "_", "\\"]


@pytest.fixture
def scored_with_hostile_id(db: str, trained, models_dir: Path, tmp_path: Path,
                           synthetic_csv: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    import streamlit as st

    lines = synthetic_csv.read_text().splitlines()
    lines[1] = '"\'; DROP TABLE customer_segments; --"' + lines[1][lines[1].index(","):]
    path = tmp_path / "hostile.csv"
    path.write_text("\n".join(lines) + "\n")
    load_batch(db, path)
    model = register_champion(db, trained, models_dir, "m-abuse-1")
    scoring.score_customers(db, model, mode="full")
    monkeypatch.setenv("SEGMENTATION_DATABASE_URL", db)
    st.cache_data.clear()
    st.cache_resource.clear()
    return db


def test_lookup_treats_hostile_input_as_a_plain_id(scored_with_hostile_id: str) -> None:
    at = AppTest.from_file(str(ROOT / "streamlit_app" / "app.py"), default_timeout=60)
    at.run()
    open_page(at, "lookup")
    for text in HOSTILE[1:]:
        at.text_input(key="lookup_id").set_value(text).run()
        assert not at.exception
        assert any("No scored customer" in w.value for w in at.warning), text
    at.text_input(key="lookup_id").set_value(HOSTILE[0]).run()  # this one is a real id
    assert any(t.value == f"customer {HOSTILE[0]}" for t in at.text)
    assert query(scored_with_hostile_id, "SELECT count(*) FROM customer_segments") == \
        [(5_000,)]
