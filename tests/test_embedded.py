"""The embedded default: no SEGMENTATION_DATABASE_URL, nothing installed, a working demo."""

import os
from pathlib import Path

import pytest

from tests.helpers import run_cli


def segment_table(out: str) -> list[tuple[int, str, int]]:
    """The demo's closing table: (id, name, customers) per segment."""
    import re

    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\s*id\s+segment\s", line))
    rows = []
    for line in lines[start + 1:]:
        found = re.match(r"\s*(\d+)\s+(.+?)\s+([\d,]+)\s+[\d.]+%$", line)
        if not found:
            break
        rows.append((int(found[1]), found[2], int(found[3].replace(",", ""))))
    return rows


@pytest.mark.slow
def test_demo_on_the_embedded_default(tmp_path: Path, prefect_api: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTATION_")}
    env["HOME"] = str(tmp_path)  # a fresh user: state goes to ~/.segmentation
    try:
        result = run_cli("demo", "--rows", "2000", env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        segments = segment_table(result.stdout)
        assert len(segments) == 4, result.stdout  # k = 4, each printed once
        assert sum(count for _, _, count in segments) == 2000  # every customer, once
        assert len({name for _, name, _ in segments}) == 4 and all(n for _, n, _ in segments)
        assert [seg for seg, _, _ in segments] == [0, 1, 2, 3]
        assert (tmp_path / ".segmentation" / "pgdata" / "PG_VERSION").exists()
        again = run_cli("--demo", "db", "url", env=env)  # as the demo's last lines print it
        owner = [line for line in again.stdout.splitlines() if line.startswith("owner (ops):")]
        assert again.returncode == 0 and len(owner) == 1, again.stdout
        assert "psql -h " in owner[0] and owner[0].endswith(" segmentation_demo")
    finally:
        stopped = run_cli("db", "stop", env=env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout


@pytest.fixture(scope="module")
def embedded_home(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A private embedded server for this module, stopped at the end."""
    from segmentation.embedded import ensure_embedded, stop_embedded

    home = tmp_path_factory.mktemp("embedded")
    url = ensure_embedded(home)
    try:
        yield home, url
    finally:
        stop_embedded(home)


def test_the_embedded_server_wants_its_password(embedded_home) -> None:  # type: ignore[no-untyped-def]
    """Another local user (or process) on the socket without the password is refused; the
    password lives in SEGMENTATION_HOME, readable by its owner only."""
    import stat

    import psycopg
    from sqlalchemy.engine import make_url

    from segmentation.db import conninfo
    from segmentation.embedded import PASSWORD_FILE, pgdata_path

    home, url = embedded_home
    secret = home / PASSWORD_FILE
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) & 0o066 == 0  # nobody else lists or reads it
    if os.geteuid() != 0:  # (as root the server's own user must traverse it: 0711)
        assert stat.S_IMODE(home.stat().st_mode) & 0o077 == 0
    with psycopg.connect(conninfo(url)) as conn:  # the URL the CLI resolves carries it
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                            ).fetchone() == (True,)
    anonymous = make_url(url)._replace(password=None).render_as_string(hide_password=False)
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(conninfo(anonymous)).close()
    wrong = make_url(url).set(password="guess").render_as_string(hide_password=False)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(conninfo(wrong)).close()
    socket_dir = make_url(url).query["host"]
    assert stat.S_IMODE(Path(socket_dir).stat().st_mode) & 0o077 == 0, \
        "the socket's directory is reachable by other users"
    hba = (pgdata_path(home) / "pg_hba.conf").read_text()
    assert "trust" not in "\n".join(line for line in hba.splitlines()
                                    if not line.lstrip().startswith("#"))


def test_a_data_directory_of_another_major_version_is_refused(tmp_path: Path) -> None:
    from segmentation.embedded import ensure_embedded, pgdata_path
    from segmentation.errors import SegmentationError

    pgdata = pgdata_path(tmp_path)
    pgdata.mkdir(mode=0o700)
    (pgdata / "PG_VERSION").write_text("15\n")
    with pytest.raises(SegmentationError, match=r"created by PostgreSQL 15.*bundles "
                                                 r"PostgreSQL 18.*not upgraded"):
        ensure_embedded(tmp_path)
    assert (pgdata / "PG_VERSION").read_text() == "15\n"  # left as it was
