#!/usr/bin/env bash
# Restores every object under a prefix of a versioned bucket to its state at a point in
# time, through the proxy, with aws-cli only (README, "Recovering a prefix from versions").
#
#   scripts/restore-point-in-time.sh [--dry-run] BUCKET PREFIX TIME
#
# TIME is anything `date -d` reads (e.g. 2026-12-06T03:10:00Z). Set S3_ENDPOINT to the
# proxy's URL (passed as --endpoint-url) and the usual AWS_* credentials of a proxy client.
#
# For each key the newest version or delete marker written at or before TIME decides:
#   - a version that is not the current one is copied over the key
#     (`copy-object --copy-source BUCKET/KEY?versionId=V`: a new, current version);
#   - a delete marker, or no entry at all (the key was created after TIME), while the key
#     currently exists: the key is deleted (a delete marker; no version is removed).
# Nothing is ever deleted by version id, so every step can be undone. (A second run copies
# the same versions again: the proxy re-encrypts every copy, so a restored key cannot be
# told from the version it came from without reading both.)
set -euo pipefail

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
    dry_run=1
    shift
fi
if [[ $# -ne 3 ]]; then
    echo "usage: $0 [--dry-run] BUCKET PREFIX TIME" >&2
    exit 2
fi
bucket=$1 prefix=$2 when=$3
target_ms=$(date -u -d "$when" +%s%3N)
aws_s3() {
    aws ${S3_ENDPOINT:+--endpoint-url "$S3_ENDPOINT"} "$@"
}

# One line per version and delete marker: kind, key, version id, LastModified, IsLatest.
entries() {
    local kind field
    for kind in V D; do
        if [[ $kind == V ]]; then field=Versions; else field=DeleteMarkers; fi
        # A failed listing stops the script (set -e): an empty plan must mean "nothing to do".
        local out
        out=$(aws_s3 s3api list-object-versions --bucket "$bucket" --prefix "$prefix" --output text \
            --query "${field}[].['$kind', Key, VersionId, LastModified, IsLatest]")
        grep -v '^None$' <<< "$out" || true
    done
}

listing=$(mktemp)
raw=$(mktemp)
trap 'rm -f "$listing" "$raw"' EXIT
entries > "$raw"
while IFS=$'\t' read -r kind key version modified latest; do
    [[ -n "$kind" ]] || continue
    printf '%s\t%s\t%s\t%s\t%s\n' "$kind" "$key" "$version" "$(date -u -d "$modified" +%s%3N)" "$latest"
done < "$raw" > "$listing"

# Per key: the current entry and the newest entry at or before the target time.
plan=$(awk -F'\t' -v t="$target_ms" '
    { key = $2 }
    $5 == "True" { current[key] = $1 "\t" $3 }
    $4 <= t && (!(key in at) || $4 > at_ms[key]) { at[key] = $1 "\t" $3; at_ms[key] = $4 }
    { seen[key] = 1 }
    END {
        for (key in seen) {
            split(current[key], c, "\t"); split(at[key], w, "\t")
            if (w[1] == "V" && !(c[1] == "V" && c[2] == w[2])) print "copy\t" key "\t" w[2]
            else if (w[1] != "V" && c[1] == "V") print "delete\t" key "\t"
        }
    }' "$listing" | sort -t$'\t' -k2)

copied=0 deleted=0
while IFS=$'\t' read -r action key version; do
    [[ -n "$action" ]] || continue
    if [[ $action == copy ]]; then
        echo "restore $key to version $version"
        if [[ $dry_run -eq 0 ]]; then
            aws_s3 s3api copy-object --bucket "$bucket" --key "$key" \
                --copy-source "$bucket/$key?versionId=$version" >/dev/null   # aws-cli percent-encodes the key
        fi
        copied=$((copied + 1))
    else
        echo "delete $key (it did not exist at $when)"
        if [[ $dry_run -eq 0 ]]; then
            aws_s3 s3api delete-object --bucket "$bucket" --key "$key" >/dev/null
        fi
        deleted=$((deleted + 1))
    fi
done <<< "$plan"
echo "restored $copied, deleted $deleted$([[ $dry_run -eq 1 ]] && echo ' (dry run: nothing changed)')"
