"""Every setting is documented in the README, and the README quickstart is the two promised commands."""

from __future__ import annotations

from pathlib import Path

from spanprism.api.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_documented():
    for name, field in Settings.model_fields.items():
        assert f"`{name}`" in README, f"setting {name} is missing from the README settings table"
        assert f"SPANPRISM_{name.upper()}" in README, f"env var of {name} is missing from the README"
        assert field.description, f"setting {name} has no help text"


def test_quickstart_is_two_commands():
    quickstart = README.split("## Quickstart", 1)[1].split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in quickstart.splitlines()[1:] if line.strip()]
    assert commands == ["make demo", "make test"]
