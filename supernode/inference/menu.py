"""The model menu: what this supernode sells, at what price, within which limits.

A model is on the menu while a healthy local node serves it. Prices and limits come from
the menu file where it names the model, else from the settings' defaults."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from supernode.config import Settings


@dataclass(frozen=True)
class ModelEntry:
    model: str
    credits_per_input_token: int
    credits_per_output_token: int
    max_new_tokens: int
    max_input_tokens: int

    def cost(self, input_tokens: int, output_tokens: int) -> int:
        return input_tokens * self.credits_per_input_token + (
            output_tokens * self.credits_per_output_token
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Menu:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.priced: dict[str, dict[str, int]] = {}
        if settings.model_menu_file is not None:
            entries = json.loads(Path(settings.model_menu_file).read_text())
            for e in entries:
                if not isinstance(e, dict) or not isinstance(e.get("model"), str):
                    raise ValueError("each menu entry needs a model name")
                self.priced[e["model"]] = {
                    k: int(v) for k, v in e.items() if k != "model" and isinstance(v, int)
                }

    def entry(self, model: str) -> ModelEntry:
        p = self.priced.get(model, {})
        return ModelEntry(
            model=model,
            credits_per_input_token=p.get(
                "credits_per_input_token", self.s.credits_per_input_token
            ),
            credits_per_output_token=p.get(
                "credits_per_output_token", self.s.credits_per_output_token
            ),
            max_new_tokens=min(
                p.get("max_new_tokens", self.s.max_new_tokens), self.s.max_new_tokens
            ),
            max_input_tokens=min(
                p.get("max_input_tokens", self.s.max_input_tokens), self.s.max_input_tokens
            ),
        )
