"""The README's demo command brings the stack up (aws-cli works against it) and down."""

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
    finally:
        down = subprocess.run(demo + ["down"], capture_output=True, text=True, timeout=60)
    assert down.returncode == 0 and "stopped 3 processes" in down.stdout, down.stdout + down.stderr
    assert not os.path.exists(os.path.join(ROOT, ".demo"))
