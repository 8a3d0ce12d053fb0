"""The least a Streamlit lookup can cost: the app's title, navigation and lookup box, and one
line of text for an answer, with no database. bench_app.py drives 20 tabs against it in the
same run as against the app, so the app's figure is read against what Streamlit and Chromium
cost on this machine whatever the page does."""

import streamlit as st

st.set_page_config(page_title="Customer segments", layout="wide")
st.title("Customer segments")


def overview() -> None:
    st.header("Segments")


def lookup() -> None:
    st.header("Customer lookup")
    customer_id = st.text_input("Customer id", key="lookup_id").strip()
    if customer_id:
        st.text(f"customer {customer_id}")


st.navigation([st.Page(overview, title="Overview", url_path="overview", default=True),
               st.Page(lookup, title="Lookup", url_path="lookup")], position="top").run()
