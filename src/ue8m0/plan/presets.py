"""Model presets and ``config.json`` loading: the one place that knows which models ship.

A preset is a ``config.json`` under ``plan/data/models/``: its file name (without ``.json``) is the
preset key, its ``_name_or_path`` the display name, and ``_ue8m0_sources`` (where present) the
public URLs its numbers come from. :data:`PRESETS` is read from that directory, so the CLI's help,
its error messages and the loader list the same presets.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from ue8m0.plan.deepseek_v4 import is_v4, spec_from_config
from ue8m0.plan.errors import PlanError
from ue8m0.plan.models import ModelSpec

_DATA = resources.files("ue8m0.plan") / "data" / "models"

#: preset key -> file name, one per shipped config
PRESETS: dict[str, str] = {
    p.name[: -len(".json")]: p.name
    for p in sorted(_DATA.iterdir(), key=lambda p: p.name)
    if p.name.endswith(".json")
}
#: other names of the presets (same architecture: same plan)
ALIASES: dict[str, str] = {
    "deepseek-v3": "deepseek-v3.1",
    "deepseek-r1": "deepseek-v3.1",
    "deepseek-v3.1-base": "deepseek-v3.1",
    "deepseek-v4-flash-0731": "deepseek-v4-flash",
    "deepseek-v4-flash-base": "deepseek-v4-flash",
    "deepseek-v4-pro-base": "deepseek-v4-pro",
}


def preset_names() -> list[str]:
    """Every name ``--model`` accepts as a preset: the presets, then their aliases."""
    return [*PRESETS, *ALIASES]


def preset_config(key: str) -> dict[str, Any]:
    """The shipped ``config.json`` dict of preset ``key``."""
    data: dict[str, Any] = json.loads((_DATA / PRESETS[key]).read_text("utf-8"))
    return data


def model_from_config(config: dict[str, Any], name: str) -> ModelSpec:
    """A :class:`ModelSpec` from any supported ``config.json`` dict."""
    if is_v4(config):
        return spec_from_config(config, name)
    if "hidden_size" not in config and isinstance(config.get("text_config"), dict):
        config = config["text_config"]
    return ModelSpec.from_config(config, name)


def load_model(name_or_path: str | Path) -> ModelSpec:
    """A preset by case-insensitive name (``deepseek-v3.1``), or a ``config.json`` path."""
    text = str(name_or_path)
    key = ALIASES.get(text.lower(), text.lower())
    if key in PRESETS:
        config = preset_config(key)
        return model_from_config(config, str(config["_name_or_path"]).split("/")[-1])
    path = Path(text)
    if path.is_dir():
        path = path / "config.json"
    if not path.exists():
        known = ", ".join(preset_names())
        raise PlanError(f"unknown model {text!r}: not a preset ({known}) nor a config.json path")
    try:
        config = json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise PlanError(f"{path}: JSON nested too deeply to be a config") from None
    if not isinstance(config, dict):
        raise PlanError(f"{path}: a config.json must hold a JSON object")
    return model_from_config(config, str(config.get("_name_or_path") or path.parent.name))
