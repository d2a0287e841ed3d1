"""The local demo stack: moto (a local S3 server), memkey-server with a freshly generated
key delivered by memkey-admin, and s3-crypt-proxy in front. `up` starts it in .demo/ and
prints what to try; `down` stops every process it started."""

import json
import os
import shutil
import signal
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))
import harness  # noqa: E402

DEMO = os.path.join(HERE, "..", ".demo")
STATE = os.path.join(DEMO, "state.json")
BUCKET = "demo-bucket"


def up():
    if os.path.exists(STATE):
        print("demo already running; `scripts/demo.sh down` first")
        return 1
    # A fresh stack every time: new key, new identities, empty backend.
    shutil.rmtree(DEMO, ignore_errors=True)
    os.makedirs(DEMO)
    backend = harness.start_backend("moto", DEMO)
    import boto3
    boto3.client("s3", endpoint_url=backend.endpoint, region_name=backend.region, aws_access_key_id=backend.access_key,
                 aws_secret_access_key=backend.secret_key).create_bucket(Bucket=BUCKET)
    keyd = harness.Keyd(DEMO)
    key_file = keyd.new_key(1)
    r = keyd.send_key(key_file)
    if r.returncode != 0:
        print(r.stdout, r.stderr)
        return 1
    proxy = harness.Proxy(DEMO, backend, keyd, tls=False, allowed_buckets=[BUCKET], audit_log="stdout")
    proxy.wait_ready()
    with open(STATE, "w") as f:
        json.dump({"pids": [proxy.proc.pid, keyd.proc.pid, backend.proc.pid]}, f)
    env = f"AWS_ACCESS_KEY_ID={proxy.access_key} AWS_SECRET_ACCESS_KEY={proxy.secret_key} AWS_DEFAULT_REGION=us-east-1"
    # The commands must work as printed, also where no `aws` is on PATH: the venv's, by full path.
    aws = shutil.which("aws") or "aws"
    print(f"""
s3-crypt-proxy demo is up (logs in .demo/):
  S3 endpoint (proxy)   {proxy.endpoint}   bucket: {BUCKET}
  admin / dashboard     {proxy.admin_url}/   (metrics at /metrics)
  local S3 backend      {backend.endpoint}   (holds only ciphertext)
  keyd                  {keyd.url}   fingerprint {keyd.fingerprint}
  master key file       {key_file}

Try:
  export {env}
  echo 'hello, encrypted world' > /tmp/hello.txt
  {aws} --endpoint-url {proxy.endpoint} s3 cp /tmp/hello.txt s3://{BUCKET}/hello.txt
  {aws} --endpoint-url {proxy.endpoint} s3 ls s3://{BUCKET}/
  {aws} --endpoint-url {proxy.endpoint} s3 cp s3://{BUCKET}/hello.txt -
  # the backend's view: ciphertext
  AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x {aws} --endpoint-url {backend.endpoint} s3 cp s3://{BUCKET}/hello.txt - | od -A d -c | head -4

Stop it with: scripts/demo.sh down
""")
    return 0


def down():
    if not os.path.exists(STATE):
        print("no demo running")
        return 0
    with open(STATE) as f:
        pids = json.load(f)["pids"]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    shutil.rmtree(DEMO, ignore_errors=True)
    print(f"stopped {len(pids)} processes")
    return 0


if __name__ == "__main__":
    sys.exit({"up": up, "down": down}[sys.argv[1] if len(sys.argv) > 1 else "up"]())
