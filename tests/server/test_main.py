"""``crantseg serve`` (crantseg_dask.server.main): prints address, datastack and token; serves."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import requests

from crantseg_dask.server.main import main


def test_serve_prints_address_datastack_token_and_serves(tiny_path, tmp_path):
    token = "0123456789abcdef0123456789abcdef"
    env = {**os.environ, "HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "crantseg_dask.server.main", "--dataset", str(tiny_path), "--port", "0",
         "--datastack", "my_stack", "--token", token, "--latency-ms", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Press Ctrl+C"):
                break
        out = "".join(lines)
        fields = dict(ln.strip().split(":", 1) for ln in lines if ln.startswith("  "))
        address = fields["address"].strip()
        assert address.startswith("http://127.0.0.1:")
        assert fields["datastack"].strip() == "my_stack"
        assert fields["token"].strip() == token
        assert "latency_ms=1.0" in out
        r = requests.get(f"{address}/info/api/v2/datastacks", headers={"Authorization": f"Bearer {token}"})
        assert r.json() == ["my_stack"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert token not in proc.stderr.read()


def test_bad_arguments_exit_2(tiny_path, tmp_path, capsys):
    assert main(["--dataset", str(tmp_path / "nothing")]) == 2
    assert "is neither a preset (demo, tiny) nor an existing directory" in capsys.readouterr().err
    assert main(["--dataset", str(tiny_path), "--token", "just_a_test"]) == 2
    assert main(["--dataset", str(tiny_path), "--fail-rate", "2"]) == 2
