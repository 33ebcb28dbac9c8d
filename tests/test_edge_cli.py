"""``streamcqrs token`` and ``streamcqrs gateway`` as an operator runs them (subprocesses).

A token made on the command line opens the gateway (served by ``streamcqrs gateway``) for
its scopes; revoked, it is refused; a malformed scope is one error line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx

from tests.commands import ROOT, clean_env, one_error_line, streamcqrs
from tests.edge_support import free_port
from tests.support import Backend


def test_tokens_from_the_command_line_open_the_gateway_until_revoked(real: Backend) -> None:
    """``token create`` prints a token once; the gateway that ``streamcqrs gateway`` serves
    takes it for its scope (202) and refuses a scope it lacks (403); ``token list`` shows
    names and scopes, never a token; after ``token revoke`` the same token is 401; a
    malformed scope is refused with one error line."""
    url = real.url or ""
    made = streamcqrs("token", "create", "ops", "--scope", "execute:hello", url=url)
    assert 0 == made.returncode, made.stderr
    token = made.stdout.strip()
    listed = streamcqrs("token", "list", "--json", url=url)
    assert [{"name": "ops", "scopes": ["execute:hello"]}] == json.loads(listed.stdout)
    assert token not in listed.stdout
    port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "streamcqrs", "gateway", "tests.edgeapps:app", "--port", str(port)],
        cwd=ROOT, env=clean_env(REDIS_URL=url), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/docs", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the gateway did not start in 30 s"
                time.sleep(0.05)
        headers = {"authorization": f"Bearer {token}"}
        posted = httpx.post(f"{base}/ops/hello/request_from_human", json={"name": "ann"},
                            headers=headers)  # fmt: skip
        viewed = httpx.get(f"{base}/views/hello/1", headers=headers)
        revoked = streamcqrs("token", "revoke", "ops", url=url)
        after = httpx.post(f"{base}/ops/hello/request_from_human", json={"name": "bo"},
                           headers=headers)  # fmt: skip
    finally:
        gateway.terminate()
        gateway.wait(20)
    assert (202, 403) == (posted.status_code, viewed.status_code)
    assert (0, 401) == (revoked.returncode, after.status_code)
    bad = streamcqrs("token", "create", "x", "--scope", "read:hello", url=url)
    assert "must be ACTION:SUBSYSTEM" in one_error_line(bad)


def test_gateway_acl_prints_the_gateway_and_relay_users() -> None:
    """``gateway --acl --relay`` prints one ACL SETUSER line each for the gateway's and the
    relay's users, each after a comment saying what it is for, and starts no server."""
    result = streamcqrs("gateway", "tests.edgeapps:app", "--acl", "--relay",
                        "bench.edge_apps:relay", "--password", "pw")  # fmt: skip
    assert 0 == result.returncode, result.stderr
    lines = result.stdout.splitlines()
    assert ["# hello-gateway", "ACL SETUSER hello-gateway", "# relay-bot",
            "ACL SETUSER relay-bot"] == [
        " ".join(line.split()[:3 if line.startswith("ACL") else 2]).rstrip(":")
        for line in lines
    ]  # fmt: skip
