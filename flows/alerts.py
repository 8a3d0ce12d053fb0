"""Install the alert automations (ops/automation-failed-flow-run.yaml) on a Prefect server."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

import yaml
from prefect.automations import Automation
from prefect.blocks.notifications import CustomWebhookNotificationBlock

AUTOMATIONS = Path(__file__).resolve().parent.parent / "ops" / "automation-failed-flow-run.yaml"
BLOCK_NAME = "segmentation-alerts"


def save_webhook_block(url: str) -> UUID:
    """The notification target (a JSON webhook), saved as a Prefect block; returns its id."""
    block = CustomWebhookNotificationBlock(
        name="segmentation", url=url, method="POST", headers={}, cookies={},
        json_data={"subject": "{{subject}}", "body": "{{body}}"})
    return UUID(str(block.save(BLOCK_NAME, overwrite=True)))


def install_automations(block_id: UUID, path: Path = AUTOMATIONS) -> list[str]:
    """Create (or replace, by name) the automations in `path`; returns their names."""
    text = path.read_text().replace("{{ block_document_id }}", str(block_id))
    text = text.replace("{{ '{{' }}", "{{").replace("{{ '}}' }}", "}}")
    installed = []
    for spec in yaml.safe_load(text)["automations"]:
        try:
            existing: Automation = Automation.read(name=spec["name"])  # type: ignore[assignment]
            existing.delete()  # replace, never duplicate
        except (ValueError, LookupError):
            pass
        Automation.model_validate(spec).create()
        installed.append(spec["name"])
    return installed
