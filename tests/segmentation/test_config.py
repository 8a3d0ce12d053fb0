"""Settings: environment in, passwords never out."""

from pathlib import Path

import pytest

from segmentation.config import Settings, load_settings, mask_url


def test_mask_url_hides_password() -> None:
    masked = mask_url("postgresql+psycopg://ops:s3cr3t-pw@db.internal:5432/seg")
    assert "s3cr3t-pw" not in masked
    assert "ops" in masked and "db.internal" in masked


def test_mask_url_never_echoes_garbage() -> None:
    assert "hunter2" not in mask_url("not a url hunter2")


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEGMENTATION_DATABASE_URL", "postgresql+psycopg://u@h/d")
    monkeypatch.setenv("SEGMENTATION_HOME", str(tmp_path))
    monkeypatch.delenv("SEGMENTATION_MODELS_DIR", raising=False)
    settings = load_settings()
    assert settings.database_url is not None  # a secret: never shown by repr or logs
    assert settings.database_url.get_secret_value() == "postgresql+psycopg://u@h/d"
    assert "u@h" not in repr(settings)
    assert settings.models_path == tmp_path / "models"


def test_models_dir_overrides_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEGMENTATION_MODELS_DIR", str(tmp_path / "elsewhere"))
    assert Settings().models_path == tmp_path / "elsewhere"


def test_invalid_share_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENTATION_QUARANTINE_MAX_SHARE", "1.5")
    with pytest.raises(ValueError, match="quarantine_max_share"):
        Settings()


def test_mask_secrets_hides_passwords_in_any_text() -> None:
    from segmentation.config import mask_secrets

    text = ("cannot connect to postgresql+psycopg://ops:topsecret@db:5432/x; retried"
            " postgresql://u:p%40ss@h/d")
    masked = mask_secrets(text)
    assert "topsecret" not in masked and "p%40ss" not in masked
    assert masked == ("cannot connect to postgresql+psycopg://ops:***@db:5432/x; retried"
                      " postgresql://u:***@h/d")
    plain = "model m1 is a pickle from an earlier release: retrain"
    assert mask_secrets(plain) == plain  # a message without a URL is kept whole
