"""The README's demo command brings the stack up and down, and the commands it prints work as
printed, in a shell that has nothing of the project's venv on its PATH."""

import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def test_demo_up_and_down(tmp_path):
    demo = [sys.executable, os.path.join(ROOT, "scripts", "demo.py")]
    up = subprocess.run(demo + ["up"], capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        env = dict(os.environ)
        env.pop("AWS_CA_BUNDLE", None)
        for k, v in re.findall(r"(AWS_[A-Z_]+)=(\S+)", re.search(r"export (.*)", up.stdout).group(1)):
            env[k] = v
        endpoint = re.search(r"S3 endpoint \(proxy\)\s+(\S+)", up.stdout).group(1)
        src = tmp_path / "hello.txt"
        src.write_text("hello, encrypted world\n")
        aws = ["aws", "--endpoint-url", endpoint]
        subprocess.run(aws + ["s3", "cp", str(src), "s3://demo-bucket/hello.txt"], env=env, check=True, capture_output=True)
        out = subprocess.run(aws + ["s3", "cp", "s3://demo-bucket/hello.txt", "-"], env=env, check=True, capture_output=True).stdout
        assert out == b"hello, encrypted world\n"
        # The "Try:" block, run as a user pastes it: a plain shell, system PATH only.
        block = up.stdout.split("Try:\n", 1)[1].split("\nStop it with", 1)[0]
        plain = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
        run = subprocess.run(["bash", "-eu", "-c", block], env=plain, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        assert run.stdout.count("hello, encrypted world") == 1, run.stdout  # through the proxy only
        assert "hello.txt" in run.stdout  # the listing
    finally:
        down = subprocess.run(demo + ["down"], capture_output=True, text=True, timeout=60)
    assert down.returncode == 0 and "stopped 3 processes" in down.stdout, down.stdout + down.stderr
    assert not os.path.exists(os.path.join(ROOT, ".demo"))
