"""The package layout keeps its promises: a client process loads no server code."""

from __future__ import annotations

import json
import subprocess
import sys

import flowstate


def test_importing_the_client_loads_no_server_runtime_or_store() -> None:
    code = (
        "import json, sys; import flowstate.client; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('flowstate'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    loaded = json.loads(out.stdout)
    assert "flowstate.client" in loaded
    heavy = [
        m
        for m in loaded
        if m.split(".")[1:2] and m.split(".")[1] in {"server", "runtime", "stores", "http", "cli"}
    ]
    assert heavy == []


def test_every_public_name_resolves() -> None:
    for name in flowstate.__all__:
        assert getattr(flowstate, name) is not None, name
    assert set(flowstate.__all__) <= set(dir(flowstate))


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        flowstate.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected AttributeError")
