"""petals' inference session over a server lost mid-generation, with and without ``mends``.

Runs petals' own ``InferenceSession`` and ``RemoteSequenceManager`` (in the Petals environment)
over in-process servers: the swarm test kills a real server, but when, relative to a session's
steps and the routing table's updates, depends on timing; here both are exact."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from supernode.petals.swarm import env

CHECK = Path(__file__).with_name("mends_check.py")


def test_a_server_lost_mid_generation_is_replaced_and_the_output_is_unchanged() -> None:
    out = subprocess.run(
        [str(env.petals_python()), str(CHECK)],
        env=env.petals_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["opened"] == ["A", "B"]  # no failure: block 0 on A, blocks 1-2 on B
    # petals as released: the retry is routed through the dead server again (mend 2) ...
    assert [r["opened"] for r in report["unmended"]] == [["A", "B", "B"]] * 2, report
    assert all("B is down" in r["error"] for r in report["unmended"]), report
    # ... and, routed to C, C's first step asserts (mend 1); drop a mend once petals fails so
    assert [r["opened"] for r in report["routes_only"]] == [["A", "B", "C"]] * 2, report
    assert all("Broken input cache" in r["error"] for r in report["routes_only"]), report
    assert report["applied"] == ["replacement position"] and report["again"] == []
    # mended: C replaces B, and every hidden state equals the run with no failure
    want = {"ok": True, "same": True, "opened": ["A", "B", "C"], "victim": "B"}
    assert report["mended"] == [want, want], report
