"""One typed settings object, read from the environment once per entry point."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url


def default_home() -> Path:
    """Per-user state directory, so the CLI behaves the same from any working directory."""
    return Path.home() / ".segmentation"


DEMO_SUFFIX = "_demo"  # the demo's database: the user's database name and this


class Settings(BaseSettings):
    """Everything configurable; secrets come only from the environment."""

    model_config = SettingsConfigDict(env_prefix="SEGMENTATION_", extra="ignore")

    database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL (postgresql+psycopg://...). Unset: a private embedded server.",
    )
    app_database_url: SecretStr | None = Field(
        default=None,
        description="The app's URL, logging in as segmentation_app. Unset: the owner URL, each"
        " session switched to segmentation_app.")
    app_allowed_users: str = Field(
        default="", description="Who may use the app once signed in with its [auth] login:"
        " e-mail addresses and @domains, comma-separated (empty: nobody; the provider's"
        " sign-in alone admits no one).")
    app_allow_export: bool = Field(
        default=False, description="Let app users download the customers of a segment (CSV);"
        " each export is recorded in export_log.")
    home: Path = Field(default_factory=default_home, description="State directory.")
    demo: bool = Field(
        default=False, description="Work on the demo's own database and models (what"
        " `segmentation demo` made; `segmentation --demo VERB`), never the user's own.")
    models_dir: Path | None = Field(default=None, description="Model registry folder.")
    chunk_rows: int = Field(default=100_000, gt=0, description="Rows per streamed chunk.")
    quarantine_max_share: float = Field(default=0.05, ge=0, le=1)
    random_state: int = 42
    dask_address: str | None = Field(
        default=None,
        description="Scheduler of an existing Dask cluster for partitioned scoring (tcp://...)."
        " Unset: a local cluster of dask_workers workers.",
    )
    dask_workers: int = Field(default=2, gt=0, description="Workers of the local Dask cluster.")
    dask_processes: bool = Field(
        default=False, description="Local Dask workers as processes of their own (true) or"
        " as threads of the flow's process (false): a partition's work is PostgreSQL's COPY,"
        " Arrow parsing and numpy, which release the GIL, and threads share one copy of the"
        " libraries and the model instead of loading them once per worker.")
    retry_window_s: float = Field(
        default=600, ge=0,
        description="How long database tasks keep retrying transient errors (a restart, a"
        " failover), with exponential backoff and jitter. 0: no retries.")
    statement_timeout_s: float = Field(
        default=3600, ge=0, description="PostgreSQL statement_timeout of every session (0: none).")
    ingest_streams: int = Field(
        default=2, ge=1, le=32,
        description="COPY streams a file of 64 MiB or more is loaded on at once, each a"
        " connection and a core of the database server.")
    lock_wait_s: float = Field(
        default=1800, ge=0,
        description="How long a run waits behind another scoring run or a batch's validation.")
    quarantine_retention_days: int = Field(
        default=90, ge=0, description="Quarantined raw rows older than this are deleted by the"
        " nightly run (0: kept).")
    history_retention_days: int = Field(
        default=730, ge=0, description="Segment history older than this is deleted by the"
        " nightly run (0: kept).")
    flow_timeout_s: float = Field(
        default=4 * 3600, gt=0, description="A flow run longer than this is stopped as failed.")
    keep_prefect_server: bool = Field(
        default=True,
        description="Without PREFECT_API_URL, start a local Prefect server under the home "
                    "and keep it for later commands (false: Prefect's temporary server per "
                    "command, several seconds each).")

    @property
    def models_path(self) -> Path:
        """Where model versions live: SEGMENTATION_MODELS_DIR or <home>/models (the demo's
        in a folder of their own inside it)."""
        base = self.models_dir if self.models_dir is not None else self.home / "models"
        return base / DEMO_SUFFIX.lstrip("_") if self.demo else base


def user_allowed(email: str | None, allowed: str) -> bool:
    """Whether a signed-in e-mail is on the app's list (an address, or its @domain); case
    does not matter, and an empty list admits nobody."""
    if not email or "@" not in email:
        return False
    email = email.strip().lower()
    domain = email[email.rindex("@"):]
    rules = {rule.strip().lower() for rule in allowed.split(",") if rule.strip()}
    return email in rules or domain in rules


def load_settings() -> Settings:
    """Build settings from the environment (call once per entry point and pass it down)."""
    return Settings()


def mask_url(url: str) -> str:
    """Render a database URL with its password hidden (and without the session options the
    CLI adds, such as the statement timeout), for logs and messages."""
    try:
        parsed = make_url(url)
    except Exception:
        return "<unparseable database URL>"
    return parsed.difference_update_query(["options"]).render_as_string(hide_password=True)


_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]*:)([^\s@]*)(@)", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """Any text (an error message) with the password of every URL in it hidden; the rest
    of the text is kept as it is."""
    return _URL_PASSWORD.sub(r"\1***\3", text)
