"""A fault-injecting relay between the proxy and a real backend.

Every request the proxy sends is read up to the end of its head, matched against the armed
faults, and forwarded with `Connection: close` so that each backend connection carries one
request and every request is seen here. A fault fires once (or `times` times) for the first
requests it matches:

  status   answer with this HTTP status and an S3 error document without reaching the
           backend (the request body, when it has a Content-Length, is read first)
  delay    wait this many seconds before forwarding the request; the request is dropped
           (never reaches the backend) if the proxy hangs up meanwhile
  reset_response_after
           relay the backend's answer, but reset both connections (RST) after this many
           bytes of it
  reset_request_after
           reset both connections after this many bytes of the request body were relayed
  skip     let this many matching requests pass before the fault fires
  empty_body
           with `status`: answer with no body at all (Content-Length: 0), as Garage does
           for some errors
  early    with `status`: answer as soon as the request head is read and close at once, the
           body unread (the proxy's writes then fail), as a Garage node that is starting or
           stopping does
  header   only requests that carry this header (lowercase name) match: a provider quirk
           such as B2 refusing PUTs with If-None-Match
  flip_body_byte_at
           relay the request, but flip the lowest bit of the request body's byte at this
           offset (counted from the first byte after the head, framing included): damage in
           transit that TCP's checksum did not catch
  rewrite_response
           relay the request, read the backend's whole answer and pass
           `rewrite_response(head, body)` (bytes, the body de-chunked) on instead; it returns
           (head, body) and the relay sets Content-Length: a provider quirk in an answer,
           such as listing fields left out (see quirks.py)
  record   keep what the fault's request carried: `fault.head` (bytes, the request head)
           and `fault.body` (bytearray, the request body as the proxy sent it, before any flip)

With `keepalive = True` the relay keeps the proxy's connections open between requests (the
proxy then pools them), and `stale_next = True` closes the next reused connection as soon
as a request arrives on it, unanswered: the stale pooled connection a backend's idle
timeout leaves behind, on which the proxy retries the request.
"""

import select
import socket
import struct
import threading
import time

from harness import free_port


class Fault:
    def __init__(self, method=None, path_contains=None, times=1, status=None, code="InternalError",
                 delay=None, reset_response_after=None, reset_request_after=None, skip=0, empty_body=False,
                 header=None, flip_body_byte_at=None, record=False, rewrite_response=None, early=False):
        self.method, self.path_contains, self.times = method, path_contains, times
        self.status, self.code, self.delay = status, code, delay
        self.reset_response_after, self.reset_request_after = reset_response_after, reset_request_after
        self.skip, self.empty_body, self.header = skip, empty_body, header
        self.flip_body_byte_at, self.record = flip_body_byte_at, record
        self.rewrite_response = rewrite_response
        self.early = early
        self.head, self.body = None, bytearray()
        self.fired = 0

    def matches(self, method, target, header_names=()):
        if (self.fired >= self.times or (self.method is not None and self.method != method)
                or (self.path_contains is not None and self.path_contains not in target)
                or (self.header is not None and self.header not in header_names)):
            return False
        if self.skip > 0:
            self.skip -= 1
            return False
        return True


def _reset(*socks):
    """Closes with an RST. shutdown(SHUT_RD) first wakes the other relay thread blocked in
    recv() on the same socket: the kernel only releases (and resets) it once nobody uses it."""
    for s in socks:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.shutdown(socket.SHUT_RD)
        except OSError:
            pass
        try:
            s.close()
        except OSError:
            pass


def _close(*socks):
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


def _read_head(sock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        piece = sock.recv(65536)
        if not piece:
            return None, b""
        buf += piece
        if len(buf) > 1 << 20:
            return None, b""
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


class Relay:
    """Listens on 127.0.0.1:<port> and relays to backend_port, injecting the armed faults."""

    def __init__(self, backend_port):
        self.backend_port = backend_port
        self.port = free_port()
        self.faults = []
        self.seen = []  # (method, target) of every request, in order
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.stopped = False
        self.keepalive = False
        self.stale_next = False
        self.stale_closed = 0  # reused connections closed by stale_next
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, **kw):
        f = Fault(**kw)
        with self.lock:
            self.faults.append(f)
        return f

    def clear(self):
        with self.lock:
            self.faults.clear()

    def stop(self):
        self.stopped = True
        _close(self.listener)

    def _accept(self):
        while not self.stopped:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _take_fault(self, method, target, header_names=()):
        with self.lock:
            self.seen.append((method, target))
            for f in self.faults:
                if f.matches(method, target, header_names):
                    f.fired += 1
                    return f
        return None

    def _serve(self, down):
        head, rest = _read_head(down)
        if head is None:
            _close(down)
            return
        if self.keepalive:
            self._serve_keepalive(down, head, rest)
            return
        lines = head.split(b"\r\n")
        method, target = lines[0].decode("latin-1").split(" ")[:2]
        headers = [l for l in lines[1:] if not l.lower().startswith(b"connection:")]
        length = next((int(l.split(b":", 1)[1]) for l in headers if l.lower().startswith(b"content-length:")), None)
        names = {l.split(b":", 1)[0].strip().lower().decode("latin-1") for l in headers}
        fault = self._take_fault(method, target, names)
        if fault and fault.record:
            fault.head = head

        if fault and fault.status:
            self._answer_status(down, fault, rest, length)
            return
        if fault and fault.delay and not self._wait_unless_hung_up(down, fault.delay):
            _close(down)
            return
        try:
            up = socket.create_connection(("127.0.0.1", self.backend_port))
        except OSError:
            _reset(down)
            return
        up.sendall(b"\r\n".join([lines[0]] + headers + [b"Connection: close"]) + b"\r\n\r\n")
        req_limit = fault.reset_request_after if fault else None
        resp_limit = fault.reset_response_after if fault else None
        t = threading.Thread(target=self._pump, args=(down, up, rest, req_limit, fault), daemon=True)
        t.start()
        if fault and fault.rewrite_response:
            self._relay_rewritten(up, down, fault.rewrite_response, head_request=method == "HEAD")
        else:
            self._pump(up, down, b"", resp_limit)
        t.join(timeout=30)
        _close(up, down)

    def _serve_keepalive(self, down, head, rest):
        """Serves requests with a Content-Length (or none) one after the other on one
        proxy connection, each over a fresh backend connection; no faults but stale_next."""
        served = 0
        try:
            while head is not None:
                if not self.keepalive:
                    # Keep-alive was switched off: this pooled connection goes (the proxy
                    # retries on a fresh one, which sees the armed faults).
                    _close(down)
                    return
                if served and self.stale_next:
                    self.stale_next = False
                    self.stale_closed += 1
                    _close(down)
                    return
                lines = head.split(b"\r\n")
                method, target = lines[0].decode("latin-1").split(" ")[:2]
                with self.lock:
                    self.seen.append((method, target))
                headers = [l for l in lines[1:] if not l.lower().startswith(b"connection:")]
                length = next((int(l.split(b":", 1)[1]) for l in headers if l.lower().startswith(b"content-length:")), 0)
                body = rest
                while len(body) < length:
                    piece = down.recv(min(length - len(body), 1 << 20))
                    if not piece:
                        _close(down)
                        return
                    body += piece
                up = socket.create_connection(("127.0.0.1", self.backend_port))
                up.sendall(b"\r\n".join([lines[0]] + headers + [b"Connection: close"]) + b"\r\n\r\n" + body)
                resp_head, resp_rest = _read_head(up)
                if resp_head is None:
                    _close(up, down)
                    return
                kept = [l for l in resp_head.split(b"\r\n") if not l.lower().startswith(b"connection:")]
                down.sendall(b"\r\n".join(kept) + b"\r\n\r\n" + resp_rest)
                while True:
                    data = up.recv(65536)
                    if not data:
                        break
                    down.sendall(data)
                _close(up)
                served += 1
                head, rest = _read_head(down)
        except OSError:
            pass
        _close(down)

    @staticmethod
    def _relay_rewritten(up, down, rewrite, head_request=False):
        """Reads the backend's answer to its end (the backend closes: Connection: close),
        rewrites it and sends it on with a Content-Length (a HEAD's is kept: it tells the
        object's length)."""
        data = b""
        try:
            while True:
                piece = up.recv(65536)
                if not piece:
                    break
                data += piece
        except OSError:
            _reset(up, down)
            return
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        if any(l.lower().replace(b" ", b"") == b"transfer-encoding:chunked" for l in lines[1:]):
            plain, rest = b"", body
            while rest:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    break
                plain, rest = plain + rest[:size], rest[size + 2:]
            body = plain
        if head_request:
            head, body = rewrite(head, b"")
            framing = b"\r\n\r\n"
        else:
            head = b"\r\n".join(l for l in lines if not l.lower().startswith((b"transfer-encoding:", b"content-length:")))
            head, body = rewrite(head, body)
            framing = f"\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        try:
            down.sendall(head + framing + body)
            down.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    @staticmethod
    def _wait_unless_hung_up(sock, seconds):
        """Waits; False as soon as the peer closes or resets (pending body bytes do not count)."""
        p = select.poll()
        p.register(sock, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if p.poll(50):
                return False
        return True

    @staticmethod
    def _pump(src, dst, first, limit, fault=None):
        """Copies src to dst until EOF; resets both after `limit` bytes when set. For a
        request body, `fault` may record it and flip one of its bytes."""
        sent = 0
        data = first
        try:
            while True:
                if data and fault is not None:
                    if fault.record:
                        fault.body += data
                    at = fault.flip_body_byte_at
                    if at is not None and sent <= at < sent + len(data):
                        data = bytearray(data)
                        data[at - sent] ^= 0x01
                        data = bytes(data)
                if data:
                    if limit is not None and sent + len(data) >= limit:
                        dst.sendall(data[:max(0, limit - sent)])
                        _reset(src, dst)
                        return
                    dst.sendall(data)
                    sent += len(data)
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
        except OSError:
            _reset(src, dst)

    @staticmethod
    def _answer_status(down, fault, rest, length):
        if length is not None and not fault.early:
            need = length - len(rest)
            try:
                while need > 0:
                    piece = down.recv(min(need, 1 << 20))
                    if not piece:
                        break
                    need -= len(piece)
            except OSError:
                pass
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{fault.code}</Code>'
                f"<Message>injected by the test relay</Message></Error>").encode()
        if fault.empty_body:
            body = b""
        reason = {500: "Internal Server Error", 503: "Service Unavailable", 412: "Precondition Failed"}.get(fault.status, "Error")
        head = (f"HTTP/1.1 {fault.status} {reason}\r\nContent-Type: application/xml\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        try:
            down.sendall(head + body)
            if not fault.early:
                down.shutdown(socket.SHUT_WR)
                down.recv(1)
        except OSError:
            pass
        _close(down)
