#!/usr/bin/env python3
"""Tiny HTTP test app for pilotfish's end-to-end tests (Python 3 standard library only).

    python3 e2e/app.py --name NAME --port PORT [--listen 0.0.0.0] [--fail-all]

Every response is JSON: {"name", "method", "path", "headers", "body"} and carries the header
`x-app-name: NAME`. Query parameters change the behaviour of one request:

    ?status=503            answer with that status
    ?delay=3               sleep that many seconds (float) before answering
    ?hold=2                the same, for circuit-breaker tests (holds the connection)
    ?flaky=KEY&fail=2      the first 2 requests carrying KEY get 503, later ones succeed
                           (counter per process and per KEY)

`--fail-all` (or env APP_FAIL_ALL=1) makes every request answer 503 (outlier detection);
`--fail-file PATH` does so while PATH exists (a test fails and heals the app at run time).

`--ext-authz` makes it an HTTP ext_authz server instead (Envoy's `http_service`): a request
with `x-ext-authz: allow` gets 200 and `x-ext-authz-check-result: allowed`; any other gets
403, `x-ext-authz-check-result: denied` and a JSON body naming the app. Both carry
`x-ext-authz-saw: path=<path>;from-mesh=<x-from-mesh header>`, what the check received. Each check is
counted; GET /__count (with `x-ext-authz: count`) answers the count.
Nothing is logged per request.
"""
import argparse
import json
import os
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

FLAKY = {}
FLAKY_LOCK = threading.Lock()


EXT_AUTHZ_COUNT = [0]


def make_handler(name, fail_all, ext_authz=False, fail_file=None):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "pilotfish-test-app"
        sys_version = ""

        def log_message(self, fmt, *args):  # quiet
            pass

        def _serve(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
            q = parse_qs(urlsplit(self.path).query)

            def first(key, default=None):
                v = q.get(key)
                return v[0] if v else default

            status = 200
            for key in ("delay", "hold"):
                secs = first(key)
                if secs:
                    try:
                        time.sleep(max(0.0, min(float(secs), 600.0)))
                    except ValueError:
                        status = 400
            if first("status"):
                try:
                    status = int(first("status"))
                    if not 100 <= status <= 599:
                        status = 400
                except ValueError:
                    status = 400
            key = first("flaky")
            if key is not None:
                try:
                    fail = int(first("fail", "1"))
                except ValueError:
                    fail = 1
                with FLAKY_LOCK:
                    seen = FLAKY.get(key, 0)
                    FLAKY[key] = seen + 1
                if seen < fail:
                    status = 503
            if fail_all or (fail_file and os.path.exists(fail_file)):
                status = 503
            if ext_authz:
                verdict = self.headers.get("x-ext-authz", "")
                if verdict == "count":
                    out = (json.dumps({"name": name, "count": EXT_AUTHZ_COUNT[0]}) + "\n").encode()
                    self.send_response(200)
                    self.send_header("content-length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                    return
                with FLAKY_LOCK:
                    EXT_AUTHZ_COUNT[0] += 1
                allowed = verdict == "allow"
                out = b"" if allowed else (json.dumps({"denied_by": name}) + "\n").encode()
                self.send_response(200 if allowed else 403)
                self.send_header("x-ext-authz-check-result", "allowed" if allowed else "denied")
                # What reached the check: the path (with the provider's pathPrefix) and a
                # header the mesh config adds (includeAdditionalHeadersInCheck).
                saw = "path=%s;from-mesh=%s" % (self.path, self.headers.get("x-from-mesh", ""))
                self.send_header("x-ext-authz-saw", saw)
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                if out and self.command != "HEAD":
                    self.wfile.write(out)
                return

            doc = {
                "name": name,
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("utf-8", "replace"),
            }
            out = (json.dumps(doc) + "\n").encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("x-app-name", name)
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(out)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _serve

    return Handler


def serve_dns(listen, port, answers):
    """A minimal authoritative DNS server (UDP): A records for `answers`, an empty NOERROR
    for other types of a known name, NXDOMAIN for anything else."""
    import socket
    import struct

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((listen, port))
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            qid, _flags, qd = struct.unpack(">HHH", data[:6])
            i, labels = 12, []
            while data[i]:
                n = data[i]
                labels.append(data[i + 1 : i + 1 + n].decode())
                i += 1 + n
            qtype, _qclass = struct.unpack(">HH", data[i + 1 : i + 5])
            question = data[12 : i + 5]
        except Exception:
            continue
        name = ".".join(labels).lower()
        ip = answers.get(name)
        print(f"dns query {name} type {qtype} from {peer[0]}", file=sys.stderr, flush=True)
        if ip is None:
            out = struct.pack(">HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question
        elif qtype == 1:
            rr = struct.pack(">HHHIH", 0xC00C, 1, 1, 30, 4) + socket.inet_aton(ip)
            out = struct.pack(">HHHHHH", qid, 0x8580, 1, 1, 0, 0) + question + rr
        else:
            out = struct.pack(">HHHHHH", qid, 0x8580, 1, 0, 0, 0) + question
        sock.sendto(out, peer)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--listen", default="0.0.0.0")
    p.add_argument("--fail-all", action="store_true")
    p.add_argument("--fail-file", help="answer 503 while this file exists")
    p.add_argument("--ext-authz", action="store_true")
    p.add_argument("--tls-port", type=int, help="also serve HTTPS here (with --tls-cert/--tls-key)")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--dns-port", type=int, help="also answer DNS (UDP) here, for --dns-answer names")
    p.add_argument("--dns-answer", action="append", default=[], help="NAME=IPV4 (repeatable)")
    a = p.parse_args()
    fail_all = a.fail_all or os.environ.get("APP_FAIL_ALL", "") not in ("", "0")

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 128

        def server_bind(self):
            # HTTPServer.server_bind calls socket.getfqdn(), a DNS lookup: skip it.
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = self.server_address[:2]

    srv = Server((a.listen, a.port), make_handler(a.name, fail_all, a.ext_authz, a.fail_file))
    if a.dns_port:
        answers = dict(x.split("=", 1) for x in a.dns_answer)
        threading.Thread(target=serve_dns, args=(a.listen, a.dns_port, answers), daemon=True).start()
        print(f"app {a.name} answering DNS on {a.listen}:{a.dns_port}", file=sys.stderr, flush=True)
    if a.tls_port:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        tls = Server((a.listen, a.tls_port), make_handler(a.name, fail_all, a.ext_authz, a.fail_file))
        tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
        threading.Thread(target=tls.serve_forever, daemon=True).start()
        print(f"app {a.name} serving TLS on {a.listen}:{a.tls_port}", file=sys.stderr, flush=True)
    print(f"app {a.name} listening on {a.listen}:{a.port}", file=sys.stderr, flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
