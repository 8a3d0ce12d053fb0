"""Customer segments: the app's entry point. It signs the user in, then runs only the page
that is shown (st.navigation): a keystroke in the lookup box recomputes nothing else."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `streamlit run` from a checkout

from segmentation.config import load_settings, mask_secrets, user_allowed
from segmentation.errors import ModelError, SegmentationError

st.set_page_config(page_title="Customer segments", layout="wide")

VIEWS = Path(__file__).resolve().parent / "views"
PAGES = [("overview", "Overview"), ("segments", "Segments"), ("lookup", "Lookup"),
         ("predict", "Predict"), ("runs", "Runs"), ("models", "Models")]


def signed_in() -> bool:
    """With an [auth] section in .streamlit/secrets.toml (OIDC), only a signed-in user on
    SEGMENTATION_APP_ALLOWED_USERS sees anything; without one the app relies on where it
    listens (127.0.0.1 unless `segmentation app --no-login`)."""
    try:
        configured = "auth" in st.secrets
    except Exception:  # no secrets file at all
        configured = False
    if not configured:
        return True
    if not st.user.get("is_logged_in"):  # (absent, not False, before any sign-in)
        st.info("Sign in to see the customer segments.")
        st.button("Log in", on_click=st.login)
        return False
    st.sidebar.button("Log out", on_click=st.logout)
    email = st.user.get("email")
    if not user_allowed(str(email) if email else None, load_settings().app_allowed_users):
        # the provider proves who signed in, not that they may see customers
        st.error("This account may not use the app; ops can add it to "
                 "SEGMENTATION_APP_ALLOWED_USERS.")
        st.text(f"signed in as {email or 'an account without an e-mail address'}")
        return False
    return True


def main() -> None:
    st.title("Customer segments")
    if not signed_in():
        return
    try:
        from streamlit_app.common import app_url, warm_champion

        warm_champion(app_url())
    except SegmentationError:  # no database settings: the page says so below
        pass
    navigation = st.navigation(
        [st.Page(VIEWS / f"{name}.py", title=title, url_path=name, default=name == "overview")
         for name, title in PAGES], position="top")
    try:
        navigation.run()
    except ModelError as exc:  # the data is there; the champion's file is not usable
        st.error(f"The champion model cannot be used: {exc}")
    except (SQLAlchemyError, SegmentationError) as exc:
        message = str(exc).splitlines()[0]
        if "does not exist" in message and "relation" in message:
            st.error("The database has no schema yet: run `segmentation db migrate`.")
        else:
            st.error(f"The database is not reachable or not ready: {mask_secrets(message)}")


main()
