"""Chatter across hosts: two network namespaces of the test's own, joined by a veth pair. Host B runs the
mock LLM and a generator; host A the coordinator, the persister and the client. Every tcp channel is
CURVE-encrypted, and the coordinator lets in only the keys in its authorized directory."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from transport import curve
from services.mock_llm.script import reply_text
from tests.integration.netns import A_ADDRESS, B_ADDRESS, TwoHosts, Unavailable
from tests.integration.stack import Stack, wait_until
from tools.spawn import REPO

MODEL = "mock-1"
PORT = 7100  # the namespaces are the test's own: any port is free there


@pytest.fixture(scope="module")
def hosts():
    try:
        with TwoHosts() as made:
            yield made
    except Unavailable as exc:
        pytest.skip(f"no network namespaces here: {exc}")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A key pair for each party, and the coordinator's authorized directory (not the stranger's)."""
    folder = tmp_path_factory.mktemp("keys")
    for name in ("coordinator", "persister", "generator", "client", "stranger"):
        curve.new_keys(name, str(folder))
    authorized = folder / "authorized"
    authorized.mkdir()
    for name in ("persister", "generator", "client"):
        shutil.copy(folder / f"{name}.key", authorized)
    return folder


def curve_env(keys, name: str) -> dict:
    env = {"CHATTER_CURVE_SECRET": str(keys / f"{name}.key_secret")}
    if name == "coordinator":
        env["CHATTER_CURVE_AUTHORIZED"] = str(keys / "authorized")
    else:
        env["CHATTER_CURVE_SERVER"] = str(keys / "coordinator.key")
    return env


@pytest.fixture(scope="module")
def deployment(hosts, keys, tmp_path_factory):
    """Host A: coordinator and persister (SQLite), host B: mock LLM and generator; each process with its
    own key. Returns (a stack on host A for the client and the database, the processes' stacks)."""
    a_dir, b_dir = tmp_path_factory.mktemp("host-a"), tmp_path_factory.mktemp("host-b")
    address = {"CHATTER_COORDINATOR": f"tcp://{A_ADDRESS}:{PORT}"}
    on_a, on_b = TwoHosts.on(hosts.a), TwoHosts.on(hosts.b)
    mock_port = 8700
    upstream = {"OPENAI_BASE_URL": f"http://{B_ADDRESS}:{mock_port}/v1", "CHATTER_MOCK_HOST": B_ADDRESS,
                "CHATTER_MOCK_PORT": str(mock_port), "CHATTER_GENERATOR_DEAD_MS": "10000"}
    started = []
    try:
        for workdir, prefix, name, names in ((a_dir, on_a, "coordinator", ("coordinator",)),
                                             (a_dir, on_a, "persister", ("persister",)),
                                             (b_dir, on_b, "generator", ("mock_llm", "generator"))):
            stack = Stack(workdir, prefix=prefix, **address, **upstream, **curve_env(keys, name))
            started.append(stack)
            stack.start(*names)
        client = Stack(a_dir, prefix=on_a, **address, **curve_env(keys, "client"), CHATTER_RPC_TIMEOUT_MS="5000")
        yield client, started
    finally:
        for stack in reversed(started):
            stack.stop()


def expected(text: str, tokens: int) -> str:
    return reply_text([{"role": "user", "content": text}], MODEL, tokens)


def test_a_reply_crosses_hosts_over_curve_with_its_exact_text(deployment):
    client, _ = deployment
    text = "across the wire [[mock tokens=80]]"
    out = client.cli_json("send", text)
    assert out["status"] == "completed" and out["content"] == expected(text, 80)
    history = client.cli_json("history", out["session_id"][:10])  # a prefix, resolved over tcp
    assert [msg["content"] for msg in history["messages"]] == [text, out["content"]]
    assert client.db_message(out["message_id"])["content"] == out["content"]
    generators = client.cli_json("status")["generators"]
    assert len(generators) == 1  # the generator on host B, heard over the veth pair


def test_the_link_down_for_three_seconds_mid_reply_ends_the_reply_clearly(deployment, hosts):
    client, _ = deployment
    text = "through an outage [[mock tokens=300 tps=50]]"

    def pull_the_cable():
        time.sleep(1.5)  # mid-reply
        hosts.link(False)
        time.sleep(3)
        hosts.link(True)

    try:
        (out,) = client.send_all([text], meanwhile=pull_the_cable, timeout=90)
    finally:
        hosts.link(True)
    print("after the outage:", out["status"], out["error"])
    assert out["status"] in ("completed", "error"), out
    if out["status"] == "completed":
        assert out["content"] == expected(text, 300)
    else:
        assert out["error"] and expected(text, 300).startswith(out["content"])
    row = client.wait_db_status(out["message_id"], ("completed", "error"), timeout=30)  # nothing stays streaming
    assert row["content"] == out["content"]
    after = client.cli_json("send", "after the outage [[mock tokens=10]]")
    assert after["status"] == "completed"


def test_an_unauthorized_key_and_a_plain_client_are_refused_in_one_line(deployment, keys, hosts):
    client, _ = deployment
    before = client.cli_json("status")["counters"]
    stranger = Stack(client.workdir, prefix=client.prefix, CHATTER_COORDINATOR=client.env["CHATTER_COORDINATOR"],
                     **curve_env(keys, "stranger"), CHATTER_RPC_TIMEOUT_MS="5000")
    plain = Stack(client.workdir, prefix=client.prefix, CHATTER_COORDINATOR=client.env["CHATTER_COORDINATOR"],
                  CHATTER_RPC_TIMEOUT_MS="5000")
    for who, words in ((stranger, "not among its authorized keys"), (plain, "one side uses CURVE")):
        done = who.cli("status")
        err = done.stderr.decode()
        assert done.returncode == 1 and done.stdout == b"", err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert words in err and f"tcp://{A_ADDRESS}:{PORT}" in err
    after = wait_until(lambda: (c := client.cli_json("status")["counters"])["curve_keys_refused"] >
                       before["curve_keys_refused"] and c, what="the refusals counted")
    assert after["handshakes_refused"] >= before["handshakes_refused"] + 2
    # a process with a key the coordinator does not know says so in its log (and never gets a job)
    rogue = Stack(client.workdir / "rogue", prefix=client.prefix,
                  CHATTER_COORDINATOR=client.env["CHATTER_COORDINATOR"], **curve_env(keys, "stranger"))
    log_path = rogue.workdir / "rogue-persister.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*rogue.prefix, sys.executable, "-m", "services.persister"], env=rogue.env,
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "handshake_refused" in log_path.read_text(), what="the persister's refusal in its log")
        assert "not among its authorized keys" in log_path.read_text()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # a key put in the authorized directory is let in without a restart
    shutil.copy(keys / "stranger.key", keys / "authorized")
    try:
        assert wait_until(lambda: stranger.cli("status").returncode == 0, what="the new key let in")
    finally:
        (keys / "authorized" / "stranger.key").unlink()


def test_a_coordinator_on_a_hosts_address_without_keys_refuses_to_start(hosts, tmp_path):
    base = Stack(tmp_path / "bare", prefix=TwoHosts.on(hosts.a), CHATTER_COORDINATOR=f"tcp://{A_ADDRESS}:{PORT + 50}")
    done = subprocess.run([*base.prefix, sys.executable, "-m", "services.coordinator"], env=base.env, cwd=REPO,
                          capture_output=True, timeout=60)
    err = done.stderr.decode()
    assert done.returncode == 1 and len(err.strip().splitlines()) == 1, err
    assert "without CURVE" in err and "chatter keys new" in err and "CHATTER_INSECURE_TCP=1" in err
    insecure = Stack(tmp_path / "insecure", prefix=base.prefix, CHATTER_COORDINATOR=base.env["CHATTER_COORDINATOR"],
                     CHATTER_INSECURE_TCP="1")
    try:
        insecure.start("coordinator")  # allowed explicitly, for a private network
    finally:
        insecure.stop()


def test_a_port_in_use_and_bad_key_files_are_one_line_naming_the_setting(deployment, keys, tmp_path):
    client, _ = deployment
    garbage = tmp_path / "garbage.key_secret"
    garbage.write_text("not a key\n")
    garbage.chmod(0o600)
    open_secret = tmp_path / "open.key_secret"
    shutil.copy(keys / "client.key_secret", open_secret)
    open_secret.chmod(0o644)
    other = Stack(tmp_path / "second", prefix=client.prefix, CHATTER_COORDINATOR=client.env["CHATTER_COORDINATOR"],
                  **curve_env(keys, "coordinator"))
    cases = [
        ("coordinator", {}, "cannot bind rpc on tcp://"),  # the deployment's coordinator holds the port
        ("persister", {"CHATTER_CURVE_SECRET": str(tmp_path / "missing.key_secret")}, "CHATTER_CURVE_SECRET="),
        ("persister", {"CHATTER_CURVE_SECRET": str(garbage)}, "holds no CURVE key"),
        ("persister", {"CHATTER_CURVE_SECRET": str(open_secret)}, "chmod 600"),
        ("persister", {"CHATTER_CURVE_SERVER": ""}, "CHATTER_CURVE_SERVER"),
        ("coordinator", {"CHATTER_CURVE_AUTHORIZED": str(tmp_path / "nowhere")}, "CHATTER_CURVE_AUTHORIZED="),
    ]
    for name, env, words in cases:
        done = subprocess.run([*other.prefix, sys.executable, "-m", f"services.{name}"], env=other.env | env,
                              cwd=REPO, capture_output=True, timeout=60)
        err = done.stderr.decode()
        assert done.returncode == 1 and len(err.strip().splitlines()) == 1 and words in err, (name, env, err)


def readme_blocks() -> list[str]:
    """The code blocks of docs/DEPLOYING.md's "Deploying across hosts", in order."""
    text = (REPO / "docs" / "DEPLOYING.md").read_text()
    section = text.split("## Deploying across hosts", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```[a-z]*\n(.*?)```", section, re.S)


def test_the_deploying_pages_per_host_files_run_the_deployment(hosts, tmp_path):
    """docs/DEPLOYING.md's keys, .env files and Procfile.a, run by honcho on two hosts as written: only the key
    directory, the addresses, the database (SQLite here) and the model server (the mock) are put in."""
    keys_block, env_a, procfile_a, env_b, client_line = readme_blocks()[:5]
    keys = tmp_path / "etc"
    for line in keys_block.splitlines():  # chatter keys new NAME --dir keys; mkdir/cp authorized
        if line.startswith("chatter keys new"):
            curve.new_keys(line.split()[3], str(keys))
    (keys / "authorized").mkdir()
    for name in ("host-a", "host-b", "alice"):
        shutil.copy(keys / f"{name}.key", keys / "authorized")

    def put_in(block: str, **lines: str) -> str:
        # the module's deployment holds PORT on host A: this one takes another
        text = block.replace("/etc/chatter/", f"{keys}/").replace("10.0.0.1:7100", f"{A_ADDRESS}:{PORT + 100}")
        out = [f"{name}={lines.pop(name)}" if (name := line.split("=", 1)[0]) in lines else line
               for line in text.splitlines()]
        return "\n".join(out + [f"{k}={v}" for k, v in lines.items()]) + "\n"

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / ".env").write_text(put_in(env_a, CHATTER_DATABASE_URL=f"sqlite:///{a}/chatter.db",
                                   CHATTER_RUN_DIR=str(a / "run")))
    (a / "Procfile.a").write_text(procfile_a.replace("/etc/chatter/", f"{keys}/"))
    (b / ".env").write_text(put_in(env_b, OPENAI_BASE_URL=f"http://{B_ADDRESS}:8800/v1", CHATTER_MODEL=MODEL,
                                   CHATTER_MOCK_HOST=B_ADDRESS, CHATTER_MOCK_PORT="8800",
                                   CHATTER_RUN_DIR=str(b / "run")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATTER_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the checkout's python
    honchos = []
    try:
        for ns, workdir, argv in ((hosts.a, a, ["-f", str(a / "Procfile.a"), "start"]),
                                  (hosts.b, b, ["-f", str(REPO / "Procfile"), "start", "generator", "mock_llm"])):
            log = open(workdir / "honcho.log", "wb")
            honchos.append(subprocess.Popen([*TwoHosts.on(ns), str(Path(sys.executable).parent / "honcho"),
                                             "-d", str(REPO), "-e", str(workdir / ".env"), *argv],
                                            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
            log.close()
        client_env = env | dict(pair.split("=", 1) for pair in put_in(
            client_line.replace(" \\\n", " ").split(" chatter send")[0].replace(" ", "\n")).split())
        client_env = {k: v.replace("~/.chatter/", f"{keys}/") for k, v in client_env.items()}
        client = [*TwoHosts.on(hosts.a), sys.executable, "-m", "clients.cli"]

        def generator_joined():
            done = subprocess.run([*client, "status", "--json"], env=client_env, cwd=REPO, capture_output=True)
            return done.returncode == 0 and json.loads(done.stdout)["generators"]

        wait_until(generator_joined, timeout=60, what="the generator on host B joining over CURVE")
        text = "hello [[mock tokens=30]]"
        done = subprocess.run([*client, "send", text, "--json"], env=client_env, cwd=REPO, capture_output=True,
                              timeout=60)
        out = json.loads(done.stdout)
        assert out["status"] == "completed" and out["content"] == expected(text, 30), done.stderr.decode()
    finally:
        for proc in honchos:
            proc.terminate()
        for proc in honchos:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert "coordinator.1 stopped (rc=0)" in (a / "honcho.log").read_text()
    assert "generator.1 stopped (rc=0)" in (b / "honcho.log").read_text()
