"""Windmill's temperature example, offline: compare this reading with the last run's.

The original fetched ``http://wttr.in/Paris?format=%t``; here the reading comes from a local
text file (``source``, e.g. containing ``+12°C``) so the example runs without a network.
Run it twice: ``flowstate run examples/scripts/temperature.py --arg source=paris.txt``.
"""

from __future__ import annotations

import re
from pathlib import Path

from flowstate import scripts


def read_temperature(source: str) -> float:
    """Parse a wttr.in-style reading such as ``+12°C`` or ``-3.5°F`` into a number."""
    text = Path(source).read_text(encoding="utf-8").strip()
    match = re.match(r"^\s*([+-]?\d+(?:\.\d+)?)", text)
    if match is None:
        raise ValueError(f"{source} holds no temperature reading: {text!r}")
    return float(match.group(1))


def main(source: str) -> str:
    # Get temperature from last execution (None on the first run).
    last_temperature = scripts.get_state()

    new_temperature = read_temperature(source)

    # Set current temperature to state.
    scripts.set_state(new_temperature)

    if last_temperature is None:
        return "This is the first reading."
    if last_temperature < new_temperature:
        return "The temperature has increased."
    if last_temperature > new_temperature:
        return "The temperature has decreased."
    return "The temperature has remained the same."
