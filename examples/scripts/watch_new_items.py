"""Watch a list for new items (Windmill's "watch for changes" trigger pattern), offline.

Schedule it (``flowstate schedule examples/scripts/watch_new_items.py --every 5m
--arg source=items.json``): each run reads the list from ``source`` (a local JSON file standing
in for an external API), compares it with the keys remembered by the last run, remembers the
current keys and returns only the items it has not seen before. The first run returns every
item. ``update_state`` makes the compare-and-remember step atomic, so two overlapping runs
never both report the same new item.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flowstate import scripts


def item_key(item: Any) -> str:
    """Items are told apart by their ``id`` when they have one, else by their whole value."""
    if isinstance(item, dict) and "id" in item:
        return json.dumps(item["id"], sort_keys=True)
    return json.dumps(item, sort_keys=True)


def main(source: str) -> list[Any]:
    current = json.loads(Path(source).read_text(encoding="utf-8"))
    if not isinstance(current, list):
        raise ValueError(f"{source} must hold a JSON list, found {type(current).__name__}")
    new_items: list[Any] = []

    def remember(last_keys: list[str] | None) -> list[str]:
        # May run more than once (if another run wrote in between): recompute from scratch.
        known = set(last_keys or [])
        new_items[:] = [item for item in current if item_key(item) not in known]
        return sorted({item_key(item) for item in current})

    scripts.update_state(remember)
    return new_items
