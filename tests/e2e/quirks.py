"""Provider quirks imitated in a backend's answers, for chaos.Relay's `rewrite_response`.

Each function returns a rewrite(head, body) -> (head, body) that takes away what a real
provider leaves out, so that a test in front of Garage shows what a client would meet."""

import re

# Fields some providers leave out of ListObjectsV2 / ListObjects / ListParts /
# ListMultipartUploads answers (PBS's parser made each optional after a user report;
# StorageClass: Google Cloud Storage). `Prefix` is taken only at the top level (a
# CommonPrefixes entry keeps its own).
# EncodingType stays: a provider that leaves it out has not encoded its keys (the proxy
# never claims it; test_versions.py `test_listings_of_keys_a_backend_did_not_encode_keep_them`).
LISTING_FIELDS = ("Name", "Prefix", "KeyCount", "MaxKeys", "IsTruncated", "Marker", "Delimiter",
                  "ContinuationToken", "StartAfter", "StorageClass", "Bucket", "KeyMarker", "UploadIdMarker",
                  "MaxUploads", "MaxParts", "PartNumberMarker")


def _strip(body, name):
    if name == "Prefix":
        return re.sub(rb"(?<!<CommonPrefixes>)<Prefix>[^<]*</Prefix>|(?<!<CommonPrefixes>)<Prefix\s*/>", b"", body)
    n = name.encode()
    return re.sub(rb"<" + n + rb">[^<]*</" + n + rb">|<" + n + rb"\s*/>", b"", body)


def strip_listing_fields(names=LISTING_FIELDS, move_token_last=True):
    """Leaves the named fields out of a listing answer; with move_token_last the
    NextContinuationToken goes after the entries (fields out of S3's order)."""
    def rewrite(head, body):
        for n in names:
            body = _strip(body, n)
        if move_token_last:
            m = re.search(rb"<NextContinuationToken>[^<]*</NextContinuationToken>", body)
            if m:
                body = body.replace(m.group(0), b"")
                close = body.rindex(b"</")
                body = body[:close] + m.group(0) + body[close:]
        return head, body
    return rewrite


def drop_headers(*names):
    """Leaves the named headers out of an answer (a provider that lost Content-Type)."""
    lowered = tuple(n.lower().encode() + b":" for n in names)

    def rewrite(head, body):
        lines = head.split(b"\r\n")
        return b"\r\n".join([lines[0]] + [l for l in lines[1:] if not l.lower().startswith(lowered)]), body
    return rewrite
