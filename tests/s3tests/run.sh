#!/usr/bin/env bash
# Run the s3-crypt-proxy slice of ceph/s3-tests against one S3 endpoint.
#
#   tests/s3tests/run.sh /path/to/s3-tests-checkout [extra pytest args...]
#
# The endpoint comes from the environment:
#   S3_HOST (127.0.0.1)  S3_PORT (required)  S3_IS_SECURE (False)
#   S3_ACCESS_KEY / S3_SECRET_KEY (required): used for [s3 main], and, unless
#   S3_ALT_ACCESS_KEY / S3_ALT_SECRET_KEY are given, also for [s3 alt], [s3 tenant] and [iam*]
#   (the proxy has a single client credential)
#   S3_REGION (us-east-1): exported as AWS_DEFAULT_REGION (s3-tests' clients take the region from it)
#   PYTHON (python3): an interpreter with s3-tests' requirements and pytest-timeout installed
#   S3TESTS_TIMEOUT (120): per-test timeout in seconds
#   OUT (./s3tests-<port>): directory for s3tests.conf, junit.xml and the pytest log
#   S3TESTS_SLICE (unset): `versions` runs the versioning / Object Lock slice
#
# This script neither downloads nor builds anything of s3-tests: pass an existing checkout.
set -euo pipefail

if [ $# -lt 1 ] || [ ! -f "$1/s3tests/functional/test_s3.py" ]; then
    echo "usage: $0 /path/to/s3-tests-checkout [pytest args...]" >&2
    exit 2
fi
CHECKOUT=$(cd "$1" && pwd)
shift

: "${S3_PORT:?set S3_PORT}" "${S3_ACCESS_KEY:?set S3_ACCESS_KEY}" "${S3_SECRET_KEY:?set S3_SECRET_KEY}"
S3_HOST=${S3_HOST:-127.0.0.1}
S3_IS_SECURE=${S3_IS_SECURE:-False}
S3_REGION=${S3_REGION:-us-east-1}
ALT_AK=${S3_ALT_ACCESS_KEY:-$S3_ACCESS_KEY}
ALT_SK=${S3_ALT_SECRET_KEY:-$S3_SECRET_KEY}
PYTHON=${PYTHON:-python3}
TIMEOUT=${S3TESTS_TIMEOUT:-120}
OUT=${OUT:-./s3tests-$S3_PORT}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# The slice: object read/write, head, ListObjectsV2, multipart, copy, ranges, conditionals,
# multi-object delete and checksums. Keep in sync with README.md.
SLICE='(object_write or object_read or head or list_objects_v2 or listv2 or multipart or copy or ranged or range or _if_ or ifmatch or ifnonematch or ifmodified or ifunmodified or conditional or multi_object_delete or checksum) and not (copy_enc or copy_part_enc or logging or lifecycle or sse or encryption or policy or object_lock or cors or acl or tagging or post_object or versioning or x_amz_expires or ownership or object_writer or head_bucket or bucket_head or access_bucket)'

# S3TESTS_SLICE=versions selects the versioning and Object Lock tests instead (README.md,
# "Versions and Object Lock"): bucket versioning, versioned reads, copies and deletes, delete
# markers, Object Lock configuration, retention, legal hold and versioned GetObjectAttributes.
VERSIONS_SLICE='(versioning or versioned or object_lock or delete_marker or return_version_id) and not (logging or lifecycle or acl or if_match)'
if [ "${S3TESTS_SLICE:-}" = versions ]; then
    SLICE=$VERSIONS_SLICE
fi

CONF="$OUT/s3tests.conf"
cat > "$CONF" <<CONF
[DEFAULT]
host = $S3_HOST
port = $S3_PORT
is_secure = $S3_IS_SECURE
ssl_verify = False

[fixtures]
bucket prefix = s3cp-{random}-
iam name prefix = s3-tests-
iam path prefix = /s3-tests/

[s3 main]
display_name = M. Tester
user_id = testid
email = tester@ceph.com
api_name = $S3_REGION
access_key = $S3_ACCESS_KEY
secret_key = $S3_SECRET_KEY

[s3 alt]
display_name = john.doe
email = john.doe@example.com
user_id = 56789abcdef0123456789abcdef0123456789abcdef0123456789abcdef01234
access_key = $ALT_AK
secret_key = $ALT_SK

[s3 tenant]
display_name = testx\$tenanteduser
user_id = testx\$9876543210abcdef0123456789abcdef0123456789abcdef0123456789abcdef
access_key = $ALT_AK
secret_key = $ALT_SK
email = tenanteduser@example.com
tenant = testx

[iam]
email = s3@example.com
user_id = 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
access_key = $ALT_AK
secret_key = $ALT_SK
display_name = youruseridhere

[iam root]
access_key = $ALT_AK
secret_key = $ALT_SK
user_id = RGW11111111111111111
email = account1@ceph.com

[iam alt root]
access_key = $ALT_AK
secret_key = $ALT_SK
user_id = RGW22222222222222222
email = account2@ceph.com
CONF

# s3-tests' per-test setup/teardown empties buckets with ListObjectVersions, which Garage does
# not implement (501 NotImplemented): every test then errors in setup. This small pytest
# plugin (written here, loaded with -p) falls back to ListObjectsV2 for that cleanup only
# when the endpoint answers NotImplemented; it changes no test.
PLUGIN_DIR="$OUT/plugin"
mkdir -p "$PLUGIN_DIR"
cat > "$PLUGIN_DIR/s3cp_cleanup_fallback.py" <<'PY'
import sys
from botocore.exceptions import ClientError


def pytest_collection_finish(session):
    mod = sys.modules.get("s3tests.functional")
    if mod is None or getattr(mod, "_s3cp_patched", False):
        return
    original = mod.list_versions

    def list_versions(client, bucket, batch_size):
        try:
            yield from original(client, bucket, batch_size)
            return
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "NotImplemented":
                raise
        kwargs = {"Bucket": bucket, "MaxKeys": batch_size}
        while True:
            listing = client.list_objects_v2(**kwargs)
            objs = [{"Key": o["Key"]} for o in listing.get("Contents", [])]
            if objs:
                yield objs
            if not listing.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = listing["NextContinuationToken"]

    mod.list_versions = list_versions
    mod._s3cp_patched = True
PY

cd "$CHECKOUT"
export S3TEST_CONF="$CONF" AWS_DEFAULT_REGION="$S3_REGION" PYTHONPATH="$PLUGIN_DIR${PYTHONPATH:+:$PYTHONPATH}"
set +e
"$PYTHON" -m pytest -q -p no:cacheprovider --timeout="$TIMEOUT" -rfE -p s3cp_cleanup_fallback \
    --junitxml="$OUT/junit.xml" \
    s3tests/functional/test_s3.py -k "$SLICE" "$@" 2>&1 | tee "$OUT/pytest.log"
rc=${PIPESTATUS[0]}
set -e
echo "s3tests: results in $OUT (rc=$rc)"
exit "$rc"
