"""A client that speaks S3 exactly as Proxmox Backup Server 4.x does (see
shared/pbs-s3-client.md): HTTPS with the certificate pinned by SHA-256 fingerprint,
HTTP/1.1 keep-alive, every header signed, the signed SHA-256 of the body (never
UNSIGNED-PAYLOAD), Content-MD5 on every non-empty body, `:` sent as `%3A`,
`If-None-Match: *` for chunks, `?delete` signed as `delete=`, copies with
`x-amz-metadata-directive: REPLACE`."""

import base64
import datetime
import hashlib
import hmac
import http.client
import ssl
import urllib.parse


def quote_key(key):
    return urllib.parse.quote(key, safe="/-_.~")


def aws_quote(s):
    return urllib.parse.quote(s, safe="-_.~")


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def header(self, name):
        return self.headers.get(name.lower())

    def __repr__(self):
        return f"<{self.status} {self.headers} {self.body[:300]!r}>"


class PbsClient:
    def __init__(self, host, port, bucket, access_key, secret_key, fingerprint=None, region="us-west-1", tls=True,
                 vhost_suffix=None):
        """vhost_suffix: virtual-host addressing as PBS's default endpoint template `{{bucket}}.<suffix>`
        (the connection still goes to `host`; the Host header names the bucket)."""
        self.host, self.port, self.bucket = host, port, bucket
        self.vhost_suffix = vhost_suffix
        self.host_header = f"{host}:{port}"  # per request with vhost_suffix (see request)
        self.access_key, self.secret_key, self.region = access_key, secret_key, region
        self.fingerprint, self.tls = fingerprint, tls
        self.conn = None
        # Tests corrupt requests through these.
        self.tamper_signature = False

    def _connect(self):
        if self.tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            ctx.set_alpn_protocols(["http/1.1"])
            conn = http.client.HTTPSConnection(self.host, self.port, context=ctx, timeout=60)
            conn.connect()
            if self.fingerprint:
                der = conn.sock.getpeercert(binary_form=True)
                got = ":".join(f"{b:02x}" for b in hashlib.sha256(der).digest())
                if got != self.fingerprint:
                    raise ssl.SSLError(f"certificate fingerprint mismatch: {got}")
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        return conn

    def sign(self, method, path, query, headers, body, payload_hash=None):
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        headers = {k.lower(): v for k, v in headers.items()}
        headers["host"] = self.host_header
        headers["x-amz-date"] = amz_date
        headers["x-amz-content-sha256"] = payload_hash or hashlib.sha256(body).hexdigest()
        if body and not headers["x-amz-content-sha256"].startswith("STREAMING"):
            headers.setdefault("content-md5", base64.b64encode(hashlib.md5(body).digest()).decode())
        headers.setdefault("content-length", str(len(body)))
        signed = sorted(headers)
        cq = "&".join(f"{aws_quote(k)}={aws_quote(v)}" for k, v in sorted(query))
        ch = "".join(f"{k}:{' '.join(str(headers[k]).split())}\n" for k in signed)
        creq = "\n".join([method, path, cq, ch, ";".join(signed), headers["x-amz-content-sha256"]])
        scope = f"{amz_date[:8]}/{self.region}/s3/aws4_request"
        sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])
        k = ("AWS4" + self.secret_key).encode()
        for part in (amz_date[:8], self.region, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
        if self.tamper_signature:
            sig = sig[:-1] + ("0" if sig[-1] != "0" else "1")
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope},"
                                    f"SignedHeaders={';'.join(signed)},Signature={sig}")
        self.last_signing = (k, amz_date, scope, sig)
        return headers

    def request(self, method, key=None, query=(), headers=None, body=b"", payload_hash=None, bucket=None, send_body=None):
        bucket = bucket or self.bucket
        if self.vhost_suffix:
            self.host_header = f"{bucket}.{self.vhost_suffix}:{self.port}"
            path = "/" + (quote_key(key) if key else "")
        else:
            self.host_header = f"{self.host}:{self.port}"
            path = f"/{bucket}/" + (quote_key(key) if key else "")
        query = list(query)
        hdrs = self.sign(method, path, query, headers or {}, body, payload_hash)
        qs = "&".join(k if v == "" and k == "delete" else f"{aws_quote(k)}={aws_quote(v)}" for k, v in query)
        url = path + ("?" + qs if qs else "")
        for attempt in range(2):
            if self.conn is None:
                self.conn = self._connect()
            try:
                self.conn.request(method, url, body=body if send_body is None else send_body, headers=hdrs)
                r = self.conn.getresponse()
                data = r.read()
                resp = Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
                if r.getheader("connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return resp
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    # The operations PBS uses.
    def head_bucket(self):
        return self.request("HEAD", None)

    def list_objects_v2(self, prefix, token=None):
        q = [("list-type", "2"), ("prefix", prefix)]
        if token:
            q.append(("continuation-token", token))
        return self.request("GET", None, q)

    def put_object(self, key, data, replace=False, **kw):
        h = {"content-type": "application/octet-stream"}
        if not replace:
            h["if-none-match"] = "*"
        return self.request("PUT", key, headers=h, body=data, **kw)

    def get_object(self, key):
        return self.request("GET", key)

    def delete_object(self, key):
        return self.request("DELETE", key)

    def delete_objects(self, keys):
        body = ("<Delete>" + "".join(f"<Object><Key>{k}</Key></Object>" for k in keys) + "</Delete>").encode()
        return self.request("POST", None, [("delete", "")], body=body)

    def copy_object(self, src_key, dst_key):
        h = {"x-amz-copy-source": f"{self.bucket}/{quote_key(src_key)}", "x-amz-metadata-directive": "REPLACE",
             "content-type": "application/octet-stream"}
        return self.request("PUT", dst_key, headers=h)

    def put_aws_chunked_signed(self, key, data, chunk_size=65536, tamper_chunk=None, trailer=None):
        """PutObject with STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]: each chunk signed."""
        mode = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" + ("-TRAILER" if trailer else "")
        chunks = [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)] + [b""]

        def frame(signing):
            k, amz_date, scope, prev = signing
            out = b""
            for i, c in enumerate(chunks):
                sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, prev, hashlib.sha256(b"").hexdigest(), hashlib.sha256(c).hexdigest()])
                sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
                if tamper_chunk == i:
                    sig = "0" * 64
                out += f"{len(c):x};chunk-signature={sig}\r\n".encode() + c + b"\r\n"
                prev = sig
            if trailer:
                name, value = trailer
                line = f"{name}:{value}\n"
                sts = "\n".join(["AWS4-HMAC-SHA256-TRAILER", amz_date, scope, prev, hashlib.sha256(line.encode()).hexdigest()])
                tsig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
                out = out[:-2] + f"{name}:{value}\r\nx-amz-trailer-signature:{tsig}\r\n\r\n".encode()
            return out
        # The framed length depends only on sizes, so sign with a placeholder body first.
        length = len(frame((b"k", "d", "s", "0" * 64)))
        headers = {"content-encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data)),
                   "content-type": "application/octet-stream"}
        if trailer:
            headers["x-amz-trailer"] = trailer[0]
        bucket = self.bucket
        path = f"/{bucket}/" + quote_key(key)
        hdrs = self.sign("PUT", path, [], dict(headers, **{"content-length": str(length)}), b"", payload_hash=mode)
        hdrs["content-length"] = str(length)
        body = frame(self.last_signing)
        assert len(body) == length
        if self.conn is None:
            self.conn = self._connect()
        self.conn.request("PUT", path, body=body, headers=hdrs)
        r = self.conn.getresponse()
        data_back = r.read()
        resp = Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data_back)
        self.close()
        return resp

    def close(self):
        if self.conn:
            self.conn.close()
            self.conn = None
