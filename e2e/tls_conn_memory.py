#!/usr/bin/env python3
"""Memory per idle TLS connection on the xDS TLS port (15012), own HTTP/2 server vs
tonic/hyper (`--xds-http2 hyper` moves both xDS ports to hyper).

Starts `pilotfish serve` on the bookinfo example with free loopback ports, opens N TLS
connections (ALPN h2, no client certificate), completes the HTTP/2 preface and SETTINGS
exchange on each, keeps them idle, and prints the control plane's RSS growth per
connection. Usage: e2e/tls_conn_memory.py [PILOTFISH_BIN] [N]
"""
import os, socket, ssl, subprocess, sys, tempfile, time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/pilotfish"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 1000


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def frame(ty, flags, sid, payload=b""):
    n = len(payload)
    return bytes([n >> 16 & 255, n >> 8 & 255, n & 255, ty, flags]) + sid.to_bytes(4, "big") + payload


def run(mode):
    state = tempfile.mkdtemp()
    ports = {k: free_port() for k in ("xds", "http", "secure", "authz")}
    p = subprocess.Popen(
        [BIN, "serve", "--config-dir", "examples/bookinfo", "--state-dir", state,
         "--xds-address", f"127.0.0.1:{ports['xds']}", "--http-address", f"127.0.0.1:{ports['http']}",
         "--secure-xds-address", f"127.0.0.1:{ports['secure']}", "--authz-address", f"127.0.0.1:{ports['authz']}",
         "--xds-http2", mode],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", ports["secure"]), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(1)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        before = rss_kb(p.pid)
        conns = []
        for _ in range(N):
            raw = socket.create_connection(("127.0.0.1", ports["secure"]))
            s = ctx.wrap_socket(raw, server_hostname="pilotfish")
            assert s.selected_alpn_protocol() == "h2", s.selected_alpn_protocol()
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0) + frame(4, 1, 0))
            s.settimeout(5)
            s.recv(65536)  # the server's SETTINGS (and its ACK)
            conns.append(s)
        time.sleep(2)
        after = rss_kb(p.pid)
        print(f"{mode:5}: {N} idle TLS connections: RSS {before/1024:.1f} -> {after/1024:.1f} MB, "
              f"{(after - before) / N:.1f} kB per connection", flush=True)
        for s in conns:
            s.close()
    finally:
        p.kill()
        p.wait()


for mode in ("own", "hyper"):
    run(mode)
