"""The app's pages: each runs only when it is shown (st.navigation)."""
