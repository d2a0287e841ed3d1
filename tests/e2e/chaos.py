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
"""

import select
import socket
import struct
import threading
import time

from harness import free_port


class Fault:
    def __init__(self, method=None, path_contains=None, times=1, status=None, code="InternalError",
                 delay=None, reset_response_after=None, reset_request_after=None):
        self.method, self.path_contains, self.times = method, path_contains, times
        self.status, self.code, self.delay = status, code, delay
        self.reset_response_after, self.reset_request_after = reset_response_after, reset_request_after
        self.fired = 0

    def matches(self, method, target):
        return (self.fired < self.times and (self.method is None or self.method == method)
                and (self.path_contains is None or self.path_contains in target))


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

    def _take_fault(self, method, target):
        with self.lock:
            self.seen.append((method, target))
            for f in self.faults:
                if f.matches(method, target):
                    f.fired += 1
                    return f
        return None

    def _serve(self, down):
        head, rest = _read_head(down)
        if head is None:
            _close(down)
            return
        lines = head.split(b"\r\n")
        method, target = lines[0].decode("latin-1").split(" ")[:2]
        headers = [l for l in lines[1:] if not l.lower().startswith(b"connection:")]
        length = next((int(l.split(b":", 1)[1]) for l in headers if l.lower().startswith(b"content-length:")), None)
        fault = self._take_fault(method, target)

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
        t = threading.Thread(target=self._pump, args=(down, up, rest, req_limit), daemon=True)
        t.start()
        self._pump(up, down, b"", resp_limit)
        t.join(timeout=30)
        _close(up, down)

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
    def _pump(src, dst, first, limit):
        """Copies src to dst until EOF; resets both after `limit` bytes when set."""
        sent = 0
        data = first
        try:
            while True:
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
        if length is not None:
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
        reason = {500: "Internal Server Error", 503: "Service Unavailable"}.get(fault.status, "Error")
        head = (f"HTTP/1.1 {fault.status} {reason}\r\nContent-Type: application/xml\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        try:
            down.sendall(head + body)
            down.shutdown(socket.SHUT_WR)
            down.recv(1)
        except OSError:
            pass
        _close(down)
