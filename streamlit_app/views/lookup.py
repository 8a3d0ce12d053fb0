"""Lookup by customer id: the published segment, why, and the features beside the segment's."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from sqlalchemy import Engine

from segmentation.explain import in_units, label
from segmentation.features import FEATURES
from streamlit_app import data
from streamlit_app.common import app_url, explain, get_engine, get_lookups, get_model


def lookup(engine: Engine, url: str) -> None:
    st.header("Customer lookup")
    customer_id = st.text_input("Customer id", key="lookup_id").strip()  # pasted: spaces
    if not customer_id:
        return
    found = data.lookup_customer(get_lookups(url), customer_id)
    if found is None:
        st.warning("No scored customer with this id:")
        st.text(customer_id)  # plain text: an id is never rendered as markdown
        return
    st.text(f"customer {customer_id}")  # plain text: ids are never rendered as markdown
    st.markdown(f"**Segment {found['segment_id']}: {found['segment_name']}**  \n"
                f"model {found['model_version']}, scored {found['scored_at']:%Y-%m-%d %H:%M}")
    model = get_model(url, found["model_version"])
    row = pd.DataFrame([{f: found[f] for f in FEATURES}])
    segment = int(found["segment_id"])
    if found["loaded_at"] > found["scored_at"]:  # their data changed after the run read it
        now = int(model.predict(row)[0])
        moving = (f"with it the same model places them in segment {now}, which the next "
                  "run will publish" if now != segment else "the segment stays the same")
        st.info(f"Their data changed on {found['loaded_at']:%Y-%m-%d %H:%M}, after they were "
                f"scored: {moving}. What follows reads today's data.")
        segment = now  # explain the segment these features give, never "A rather than A"
    explain(url, model, row, segment)
    centroid = data.segment_centroid(engine, found["model_version"], segment)
    # a plain table: 17 rows read at once (no scrolling grid), and cheap for the browser
    st.table(pd.DataFrame({"feature": [label(f) for f in FEATURES],
                           "this customer": [in_units(f, found[f]) for f in FEATURES],
                           "typical in the segment": [in_units(f, centroid.get(f))
                                                      for f in FEATURES]}), hide_index=True)


lookup(get_engine(app_url()), app_url())
