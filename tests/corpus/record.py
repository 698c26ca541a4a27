#!/usr/bin/env python3
"""Record real containerd image-pull error messages for the pullhealth corpus.

Runs Debian's real ``docker-registry`` (distribution 2.8) and ``containerd`` /
``ctr`` on loopback addresses inside a private network + mount namespace
(``unshare --net --mount``), provokes every pull failure mode it can, and
writes ``tests/data/containerd_messages.jsonl``.

Nothing leaves the namespace: the namespace has only ``lo``; a stub DNS server
on 127.0.0.1:53 answers every name (``/etc/resolv.conf`` is bind-mounted over
inside the namespace only), so no query ever reaches the host's resolver.

Usage (as root; needs containerd, docker-registry, apache2-utils, util-linux,
iproute2 and the Python packages trustme + cryptography):

    python3 tests/corpus/record.py [--out tests/data/containerd_messages.jsonl]

The whole run is bounded (hard limit ``--budget`` seconds, default 170) and
removes every process and temporary directory it created.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import gzip
import hashlib
import http.client
import http.server
import io
import json
import os
import re
import shutil
import signal
import socket
import socketserver
import ssl
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
import uuid
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_OUT = os.path.join(REPO, "tests", "data", "containerd_messages.jsonl")
INNER_ENV = "PULLHEALTH_RECORD_INNER"

# ---------------------------------------------------------------- addresses
# name -> IPv4 served by the stub DNS (all inside the private netns).
HOSTS = {
    "registry.test": "127.0.0.2",  # docker-registry, anonymous
    "mismatch.test": "127.0.0.2",  # same server, name not in its cert
    "basic.test": "127.0.0.3",  # docker-registry, htpasswd
    "token.test": "127.0.0.4",  # docker-registry, token auth
    "auth.test": "127.0.0.5",  # our token server
    "fake.test": "127.0.0.6",  # scripted HTTPS registry (status codes)
    "firewall.test": "127.0.0.6",
    "ratelimit.test": "127.0.0.6",
    "error500.test": "127.0.0.6",
    "unavailable503.test": "127.0.0.6",
    "forbidden.test": "127.0.0.6",
    "challenge-refused.test": "127.0.0.6",
    "challenge-500.test": "127.0.0.6",
    "challenge-403.test": "127.0.0.6",
    "challenge-badscheme.test": "127.0.0.6",
    "challenge-norealm.test": "127.0.0.6",
    # content-serving fake: HEAD manifest works, a later GET fails
    "ratelimit-get.test": "127.0.0.6",
    "firewall-data.test": "127.0.0.6",
    "blob500.test": "127.0.0.6",
    "blobmissing.test": "127.0.0.6",
    "authdown.test": "127.0.0.12",  # nothing listens -> refused
    "untrusted.test": "127.0.0.7",  # cert from a CA the client lacks
    "expired.test": "127.0.0.8",  # expired cert from the trusted CA
    "plainhttp.test": "127.0.0.9",  # plain HTTP server on :443 (answers 400)
    "hang.test": "127.0.0.10",  # accepts TCP, never answers
    "backlog.test": "127.0.0.11",  # listen backlog full -> SYN dropped
    "refused.test": "127.0.0.12",  # closed port
    "garbage.test": "127.0.0.13",  # non-TLS banner on :443
    "eof.test": "127.0.0.14",  # accept, read ClientHello, close
    "reset.test": "127.0.0.17",  # accept, read ClientHello, RST
    "oldtls.test": "127.0.0.15",  # TLS 1.0 only
    "mtls.test": "127.0.0.16",  # requires a client certificate
    # Private-endpoint style: public name CNAMEs to a privatelink name whose
    # private address is routed into lo inside the netns (no local owner), so
    # SYNs vanish and the dial times out.  No packet leaves the namespace.
    "myregistry.azurecr.io": ("CNAME", "myregistry.privatelink.azurecr.io"),
    "myregistry.privatelink.azurecr.io": "10.1.2.3",
}
DNS_TIMEOUT_NAMES = {"slowdns.test"}  # stub never answers
DNS_SERVFAIL_NAMES = {"servfail.test"}  # stub answers SERVFAIL
# everything else (incl. *.invalid) -> NXDOMAIN

USER, PASSWORD = "alice", "s3cret"
TOKEN_ISSUER = "pullhealth-token-issuer"
ACR_FIREWALL_BODY = (
    '{"errors":[{"code":"DENIED","message":"client with IP \'1.2.3.4\' is not '
    'allowed access. Refer https://aka.ms/acr/firewall to grant access."}]}'
)
RATE_LIMIT_BODY = (
    '{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate '
    "limit. You may increase the limit by authenticating and upgrading: "
    'https://www.docker.com/increase-rate-limit"}]}'
)
ERROR500_BODY = '{"errors":[{"code":"UNKNOWN","message":"unknown error","detail":{}}]}'
FORBIDDEN_BODY = '{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}'


def log(*a):
    print("[record]", *a, file=sys.stderr, flush=True)


# ======================================================================
# outer process: re-exec inside a private net+mount namespace, bounded
# ======================================================================
def outer(args) -> int:
    if os.geteuid() != 0:
        log("must run as root (needs unshare --net --mount)")
        return 2
    for tool in ("unshare", "ip", "containerd", "ctr", "htpasswd"):
        if not shutil.which(tool):
            log(f"missing tool: {tool}")
            return 2
    if not registry_binary():
        log("missing docker-registry binary")
        return 2
    # short path: unix socket paths are limited to 108 bytes
    tmp = tempfile.mkdtemp(prefix="phrec-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env[INNER_ENV] = tmp
    cmd = [
        "unshare",
        "--net",
        "--mount",
        "--propagation",
        "private",
        "--",
        sys.executable,
        os.path.abspath(__file__),
        "--out",
        args.out,
        "--budget",
        str(args.budget),
    ]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    rc = 1
    try:
        rc = proc.wait(timeout=args.budget)
    except subprocess.TimeoutExpired:
        log(f"inner run exceeded {args.budget}s; killing it")
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        if proc.poll() is None:
            with_suppress(os.killpg, proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        # the inner process group holds containerd, registries, ctr
        with_suppress(os.killpg, proc.pid, signal.SIGKILL)
        with_suppress(proc.wait, 5)
        shutil.rmtree(tmp, ignore_errors=True)
    return rc


def with_suppress(fn, *a):
    try:
        return fn(*a)
    except Exception:
        return None


def registry_binary():
    for p in (
        "/usr/bin/docker-registry",
        shutil.which("docker-registry") or "",
        shutil.which("registry") or "",
    ):
        if p and os.path.exists(p):
            return p
    return None


# ======================================================================
# stub DNS (UDP) on 127.0.0.1:53
# ======================================================================
def _dns_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def _parse_qname(data: bytes, off: int):
    labels = []
    while True:
        n = data[off]
        off += 1
        if n == 0:
            break
        labels.append(data[off : off + n].decode("ascii", "replace"))
        off += n
    return ".".join(labels), off


class DNSStub(threading.Thread):
    def __init__(self, addr=("127.0.0.1", 53)):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(addr)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.queries = []

    def run(self):
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                break
            try:
                resp = self.answer(data)
            except Exception as e:  # malformed query: ignore
                log("dns error", e)
                continue
            if resp is not None:
                self.sock.sendto(resp, peer)

    def answer(self, data: bytes):
        qid, flags, _qd = struct.unpack("!HHH", data[:6])
        name, off = _parse_qname(data, 12)
        qtype, _qclass = struct.unpack("!HH", data[off : off + 4])
        question = data[12 : off + 4]
        lname = name.lower().rstrip(".")
        self.queries.append((lname, qtype))
        if lname in DNS_TIMEOUT_NAMES:
            return None
        rcode, answers = 0, []
        if lname in DNS_SERVFAIL_NAMES:
            rcode = 2
        elif lname in HOSTS:
            target, cur = HOSTS[lname], lname
            first = True
            while isinstance(target, tuple):  # CNAME chain
                cname = target[1]
                rr_name = b"\xc0\x0c" if first else _dns_name(cur)
                rdata = _dns_name(cname)
                answers.append(rr_name + struct.pack("!HHIH", 5, 1, 60, len(rdata)) + rdata)
                first, cur, target = False, cname, HOSTS.get(cname)
            if target is None:
                rcode = 3
            elif qtype == 1:
                rr_name = b"\xc0\x0c" if first else _dns_name(cur)
                answers.append(rr_name + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(target))
        else:
            rcode = 3  # NXDOMAIN
        rflags = 0x8000 | (flags & 0x0100) | 0x0080 | rcode  # QR, RD echoed, RA
        hdr = struct.pack("!HHHHHH", qid, rflags, 1, len(answers), 0, 0)
        return hdr + question + b"".join(answers)


# ======================================================================
# small TLS / TCP servers
# ======================================================================
class ThreadingHTTPSServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, sslctx=None):
        super().__init__(addr, handler)
        self.sslctx = sslctx

    def get_request(self):
        sock, addr = self.socket.accept()
        if self.sslctx is not None:
            sock.settimeout(5)
            sock = self.sslctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def finish_request(self, request, client_address):
        try:
            if self.sslctx is not None:
                request.do_handshake()
                request.settimeout(None)
            super().finish_request(request, client_address)
        except (ssl.SSLError, OSError):
            # keep the socket open a moment so the client reads our TLS alert
            # instead of racing into a write on a closed socket
            time.sleep(0.5)

    def handle_error(self, request, client_address):
        pass


class QuietHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        self.server.requests.append((self.command, self.headers.get("Host"), self.path))

    def send(self, status, body=b"", headers=None, ctype="application/json"):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class FakeRegistryHandler(QuietHandler):
    """Scripted registry: behaviour chosen by the Host header."""

    def _host(self):
        return (self.headers.get("Host") or "").split(":")[0].lower()

    def _reply(self):
        host, path = self._host(), self.path
        if path.startswith("/token-500"):
            return self.send(500, '{"details":"internal error while issuing token"}')
        if path.startswith("/token-403"):
            return self.send(403, '{"details":"access to the requested resource is not authorized"}')
        if host in CONTENT_HOSTS:
            return self._content(host, path)
        if host == "firewall.test":
            return self.send(403, ACR_FIREWALL_BODY)
        if host == "ratelimit.test":
            return self.send(429, RATE_LIMIT_BODY, {"Retry-After": "60"})
        if host == "error500.test":
            return self.send(500, ERROR500_BODY)
        if host == "unavailable503.test":
            return self.send(
                503, "<html><body><h1>503 Service Unavailable</h1></body></html>", ctype="text/html"
            )
        if host == "forbidden.test":
            return self.send(403, FORBIDDEN_BODY)
        if host == "challenge-refused.test":
            return self.send(
                401,
                '{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                {
                    "WWW-Authenticate": 'Bearer realm="https://authdown.test/token",service="challenge-refused.test"'
                },
            )
        if host == "challenge-500.test":
            return self.send(
                401,
                '{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                {
                    "WWW-Authenticate": 'Bearer realm="https://fake.test/token-500",service="challenge-500.test"'
                },
            )
        if host == "challenge-403.test":
            return self.send(
                401,
                '{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                {
                    "WWW-Authenticate": 'Bearer realm="https://fake.test/token-403",service="challenge-403.test"'
                },
            )
        if host == "challenge-badscheme.test":
            return self.send(
                401,
                '{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                {"WWW-Authenticate": "Negotiate"},
            )
        if host == "challenge-norealm.test":
            return self.send(
                401,
                '{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                {"WWW-Authenticate": 'Bearer service="challenge-norealm.test"'},
            )
        return self.send(
            404, '{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}'
        )

    def _content(self, host, path):
        m = re.match(r"^/v2/(.+)/(manifests|blobs)/([^/?]+)$", path)
        if not m:
            return self.send(
                404, '{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}'
            )
        kind, ref = m.group(2), m.group(3)
        content = self.server.content[host]
        manifest = content["manifest"]
        if kind == "manifests":
            if ref.startswith("sha256:") and self.command == "GET" and host == "ratelimit-get.test":
                return self.send(429, RATE_LIMIT_BODY)
            if ref not in ("1.0", sha(manifest)):
                return self.send(404, '{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}')
            return self.send(
                200,
                manifest,
                {"Docker-Content-Digest": sha(manifest)},
                ctype="application/vnd.oci.image.manifest.v1+json",
            )
        if host == "firewall-data.test":
            return self.send(403, ACR_FIREWALL_BODY)
        if host == "blob500.test":
            return self.send(500, ERROR500_BODY)
        blob = content["blobs"].get(ref)
        if blob is None or host == "blobmissing.test":
            return self.send(
                404,
                f'{{"errors":[{{"code":"BLOB_UNKNOWN","message":"blob unknown to registry","detail":"{ref}"}}]}}',
            )
        return self.send(200, blob, {"Docker-Content-Digest": ref}, ctype="application/octet-stream")

    do_GET = do_HEAD = do_POST = do_PUT = _reply


CONTENT_HOSTS = {"ratelimit-get.test", "firewall-data.test", "blob500.test", "blobmissing.test"}


class PlainHandler(QuietHandler):
    def _reply(self):
        return self.send(404, "404 page not found\n", ctype="text/plain; charset=utf-8")

    do_GET = do_HEAD = _reply


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class TokenHandler(QuietHandler):
    """Distribution token server (GET /token and OAuth2 POST /token)."""

    def _authenticate(self, user, pw):
        if user is None:
            return None, True
        return user, (user == USER and pw == PASSWORD)

    def _issue(self, user, service, scopes):
        access = []
        for scope in scopes:
            parts = scope.split(":")
            if len(parts) < 3 or parts[0] != "repository":
                continue
            name, actions = ":".join(parts[1:-1]), parts[-1].split(",")
            if user is None:
                granted = ["pull"] if name.startswith("library/") else []
            elif name == "team/secret":
                granted = []  # authenticated but no pull permission
            else:
                granted = [a for a in actions if a == "pull"]
            access.append({"type": "repository", "name": name, "actions": granted})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.server.signer_der).decode()]}
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": user or "",
            "aud": service,
            "exp": now + 300,
            "nbf": now - 30,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = (
            b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        sig = self.server.signer_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + b64url(sig)

    def _respond_token(self, user, ok, service, scopes):
        if not ok:
            return self.send(
                401,
                '{"details":"incorrect username or password"}',
                {"WWW-Authenticate": 'Basic realm="pullhealth token server"'},
            )
        tok = self._issue(user, service, scopes)
        body = json.dumps(
            {
                "token": tok,
                "access_token": tok,
                "expires_in": 300,
                "issued_at": datetime.datetime.now(datetime.UTC).isoformat(),
            }
        )
        return self.send(200, body)

    def do_GET(self):
        u = urllib.parse.urlsplit(self.path)
        if u.path != "/token":
            return self.send(404, "{}")
        q = urllib.parse.parse_qs(u.query)
        user = pw = None
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
        user, ok = self._authenticate(user, pw)
        return self._respond_token(user, ok, q.get("service", [""])[0], q.get("scope", []))

    def do_POST(self):
        u = urllib.parse.urlsplit(self.path)
        n = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(n).decode())
        if u.path != "/token":
            return self.send(404, "{}")
        if form.get("grant_type", [""])[0] != "password":
            return self.send(400, '{"error":"unsupported_grant_type"}')
        user, ok = self._authenticate(form.get("username", [None])[0], form.get("password", [""])[0])
        scopes = []
        for s in form.get("scope", []):
            scopes.extend(s.split(" "))
        return self._respond_token(user, ok, form.get("service", [""])[0], scopes)


def start_http(addr, handler, sslctx=None, **attrs):
    srv = ThreadingHTTPSServer(addr, handler, sslctx)
    srv.requests = []
    for k, v in attrs.items():
        setattr(srv, k, v)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    t.start()
    return srv


class RawServer(threading.Thread):
    """TCP server with a fixed misbehaviour: 'hang', 'garbage', 'eof', 'backlog'."""

    def __init__(self, addr, behaviour):
        super().__init__(daemon=True)
        self.behaviour = behaviour
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(addr)
        self.stop = threading.Event()
        self.held = []
        if behaviour == "backlog":
            self.sock.listen(0)
            # fill the accept queue so further SYNs are dropped
            for _ in range(3):
                c = socket.socket()
                c.setblocking(False)
                with contextlib.suppress(BlockingIOError, OSError):
                    c.connect(addr)
                self.held.append(c)
        else:
            self.sock.listen(16)
        self.sock.settimeout(0.2)

    def run(self):
        if self.behaviour == "backlog":
            self.stop.wait()
            return
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            if self.behaviour == "hang":
                self.held.append(c)
            elif self.behaviour == "garbage":
                with contextlib.suppress(OSError):
                    c.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
                self.held.append(c)
            elif self.behaviour == "eof":
                # read the ClientHello, then close cleanly (FIN -> client sees EOF)
                try:
                    c.settimeout(2)
                    c.recv(4096)
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            elif self.behaviour == "reset":
                # read the ClientHello, then abort (RST), as middleboxes do
                try:
                    c.settimeout(2)
                    c.recv(4096)
                except OSError:
                    pass
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
            elif self.behaviour == "http400":
                # what a plain-HTTP server (nginx) answers to a TLS ClientHello
                try:
                    c.settimeout(2)
                    c.recv(4096)
                    body = (
                        b"<html>\r\n<head><title>400 Bad Request</title></head>\r\n<body>\r\n"
                        b"<center><h1>400 Bad Request</h1></center>\r\n</body>\r\n</html>\r\n"
                    )
                    c.sendall(
                        b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\n"
                        b"Content-Type: text/html\r\nContent-Length: %d\r\n"
                        b"Connection: close\r\n\r\n" % len(body) + body
                    )
                except OSError:
                    pass
                c.close()

    def close(self):
        self.stop.set()
        for c in self.held:
            with_suppress(c.close)
        with_suppress(self.sock.close)


# ======================================================================
# image content + push through the registry HTTP API
# ======================================================================
def sha(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def build_images(salt=""):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        data = b"hello from the pullhealth corpus recorder\n" + salt.encode()
        ti = tarfile.TarInfo("hello.txt")
        ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
        tf.addfile(ti, io.BytesIO(data))
    tar = raw.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as g:
        g.write(tar)
    layer = gz.getvalue()
    blobs, _manifests = {sha(layer): layer}, {}

    def image(arch):
        cfg = json.dumps(
            {
                "architecture": arch,
                "os": "linux",
                "config": {"Cmd": ["/hello"]},
                "rootfs": {"type": "layers", "diff_ids": [sha(tar)]},
            },
            sort_keys=True,
        ).encode()
        blobs[sha(cfg)] = cfg
        m = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": sha(cfg),
                    "size": len(cfg),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": sha(layer),
                        "size": len(layer),
                    }
                ],
            },
            indent=2,
        ).encode()
        return m

    amd64 = image("amd64")
    arm64 = image("arm64")
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": sha(arm64),
                    "size": len(arm64),
                    "platform": {"architecture": "arm64", "os": "linux"},
                }
            ],
        },
        indent=2,
    ).encode()
    return blobs, amd64, arm64, index


def https_request(ctx, host, method, path, body=None, headers=None):
    # connect by IP (the stub DNS is authoritative), verify against the name
    conn = http.client.HTTPConnection(HOSTS[host], 443, timeout=10)
    sock = socket.create_connection((HOSTS[host], 443), timeout=10)
    conn.sock = ctx.wrap_socket(sock, server_hostname=host)
    h = {"Host": host}
    h.update(headers or {})
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, dict(r.getheaders()), data


def push(ctx, host, repo, tag, blobs, manifest, mtype, extra_manifests=()):
    for digest, blob in blobs.items():
        st, hdr, _ = https_request(ctx, host, "POST", f"/v2/{repo}/blobs/uploads/")
        assert st == 202, (st, hdr)
        loc = hdr.get("Location")
        u = urllib.parse.urlsplit(loc)
        path = u.path + "?" + (u.query + "&" if u.query else "") + "digest=" + urllib.parse.quote(digest)
        st, hdr, body = https_request(
            ctx,
            host,
            "PUT",
            path,
            body=blob,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(blob))},
        )
        assert st == 201, (st, body)
    for m, mt in extra_manifests:
        st, _, body = https_request(
            ctx, host, "PUT", f"/v2/{repo}/manifests/{sha(m)}", body=m, headers={"Content-Type": mt}
        )
        assert st == 201, (st, body)
    st, _, body = https_request(
        ctx, host, "PUT", f"/v2/{repo}/manifests/{tag}", body=manifest, headers={"Content-Type": mtype}
    )
    assert st == 201, (st, body)


# ======================================================================
# the cases
# ======================================================================
# Each: (mode, ref, extra ctr pull args, code, candidates, ctr --timeout or None)
MISSING = "sha256:" + "0" * 64


def cases():
    """Failure modes.  Labels follow what the *text* can tell: modes whose
    messages come out identical get identical labels (code + candidates)."""
    C = []

    def add(mode, ref, code, candidates=(), args=(), timeout=None, resolv=None, derive=True, note=None):
        C.append(
            dict(
                mode=mode,
                ref=ref,
                code=code,
                candidates=list(candidates),
                args=list(args),
                timeout=timeout,
                resolv=resolv,
                derive=derive,
                note=note,
            )
        )

    creds = ["--user", f"{USER}:{PASSWORD}"]
    unauth_401 = ("AUTH_REQUIRED", ["CREDENTIALS_REJECTED", "CHALLENGE_ERROR"])
    pull_denied = ("ACCESS_DENIED", ["AUTH_REQUIRED", "PERMISSION_DENIED", "REPOSITORY_NOT_FOUND"])
    forbidden_head = ("ACCESS_DENIED", ["FIREWALL_FORBIDDEN", "PERMISSION_DENIED"])
    not_found = ("IMAGE_NOT_FOUND", ["REPOSITORY_NOT_FOUND", "TAG_NOT_FOUND"])
    anon_token_403 = ("ACCESS_DENIED", ["AUTH_REQUIRED", "PERMISSION_DENIED", "FIREWALL_FORBIDDEN"])
    oauth_token_403 = ("TOKEN_EXCHANGE_DENIED", ["PERMISSION_DENIED", "FIREWALL_FORBIDDEN"])

    add("ok", "registry.test/library/hello:1.0", "OK")
    add("ok_htpasswd", "basic.test/library/hello:1.0", "OK", args=creds)
    add("ok_token", "token.test/team/app:1.0", "OK", args=creds)
    add("ok_token_anonymous_public", "token.test/library/hello:1.0", "OK")
    add("ok_hosts_dir", "registry.test/library/hello:1.0", "OK", args=["@hosts-dir"])
    # --- DNS
    add("dns_nxdomain", "registry.invalid/library/hello:1.0", "DNS_NXDOMAIN")
    add("dns_nxdomain_registry_typo", "myregistyr.azurecr.io/app:1.0", "DNS_NXDOMAIN")
    add("dns_timeout", "slowdns.test/library/hello:1.0", "DNS_TIMEOUT")
    add(
        "dns_servfail",
        "servfail.test/library/hello:1.0",
        "DNS_TIMEOUT",
        ["DNS_NXDOMAIN", "PRIVATE_ENDPOINT_DNS"],
        note="SERVFAIL; no dedicated code, treated as resolver failure",
    )
    add(
        "dns_server_unreachable",
        "registry.test/library/hello:1.0",
        "DNS_TIMEOUT",
        resolv="nameserver 127.0.0.53\noptions timeout:1 attempts:1\n",
        note="resolv.conf points at a closed port",
    )
    # --- TCP
    add("connect_refused", "refused.test/library/hello:1.0", "CONNECT_REFUSED")
    add("connect_refused_ip_port", "127.0.0.1:1/library/hello:1.0", "CONNECT_REFUSED")
    add(
        "connect_timeout_backlog_full",
        "backlog.test/library/hello:1.0",
        "CONNECT_TIMEOUT",
        note="SYNs dropped by a full accept queue; containerd's own 30s dial timeout fires",
    )
    add(
        "connect_timeout_private_endpoint_ip",
        "myregistry.azurecr.io/app:1.0",
        "CONNECT_TIMEOUT",
        ["PRIVATE_ENDPOINT_DNS", "FIREWALL_FORBIDDEN"],
        note="name CNAMEs to a privatelink name with an unreachable 10.x address; "
        "containerd's own 30s dial timeout fires",
    )
    add(
        "context_deadline_private_endpoint_ip",
        "myregistry.azurecr.io/app:1.0",
        "CONNECT_TIMEOUT",
        ["DNS_TIMEOUT", "PRIVATE_ENDPOINT_DNS", "FIREWALL_FORBIDDEN"],
        timeout="6s",
        note="same as above but cut by ctr --timeout 6s (like a kubelet/CRI deadline)",
    )
    add(
        "server_accepts_never_answers",
        "hang.test/library/hello:1.0",
        "CONNECT_TIMEOUT",
        ["TLS_PROTOCOL_ERROR", "FIREWALL_FORBIDDEN"],
    )
    # --- TLS
    add("tls_untrusted_ca", "untrusted.test/library/hello:1.0", "TLS_UNTRUSTED")
    add("tls_expired_cert", "expired.test/library/hello:1.0", "TLS_UNTRUSTED")
    add("tls_no_ca_configured", "registry.test/library/hello:1.0", "TLS_UNTRUSTED", args=["@no-ca"])
    add("tls_hostname_mismatch", "mismatch.test/library/hello:1.0", "TLS_HOSTNAME_MISMATCH")
    add("tls_plain_http_server", "plainhttp.test/library/hello:1.0", "TLS_PROTOCOL_ERROR")
    add("tls_non_tls_banner", "garbage.test/library/hello:1.0", "TLS_PROTOCOL_ERROR")
    add(
        "tls_eof_during_handshake",
        "eof.test/library/hello:1.0",
        "TLS_PROTOCOL_ERROR",
        ["FIREWALL_FORBIDDEN", "CONNECT_REFUSED"],
    )
    add(
        "tls_reset_during_handshake",
        "reset.test/library/hello:1.0",
        "TLS_PROTOCOL_ERROR",
        ["FIREWALL_FORBIDDEN", "CONNECT_REFUSED"],
    )
    add("tls_old_protocol_version", "oldtls.test/library/hello:1.0", "TLS_PROTOCOL_ERROR")
    add("tls_client_cert_required", "mtls.test/library/hello:1.0", "TLS_PROTOCOL_ERROR")
    add(
        "plain_http_client_to_tls_port",
        "registry.test:443/library/hello:1.0",
        "TLS_PROTOCOL_ERROR",
        ["REGISTRY_ERROR"],
        args=["--plain-http"],
    )
    add(
        "plain_http_client_default_port",
        "registry.test/library/hello:1.0",
        "CONNECT_REFUSED",
        args=["--plain-http"],
        note="--plain-http goes to :80 where nothing listens",
    )
    # --- HTTP status on the manifest HEAD (HEAD responses carry no body)
    add("acr_firewall_403", "firewall.test/library/hello:1.0", *forbidden_head)
    add("forbidden_403_denied", "forbidden.test/library/hello:1.0", *forbidden_head)
    add("rate_limited_429", "ratelimit.test/library/hello:1.0", "RATE_LIMITED")
    add("server_error_500", "error500.test/library/hello:1.0", "REGISTRY_ERROR")
    add("service_unavailable_503", "unavailable503.test/library/hello:1.0", "REGISTRY_ERROR")
    # --- HTTP status on a later GET (body is quoted)
    add("rate_limited_429_manifest_get", "ratelimit-get.test/library/hello:1.0", "RATE_LIMITED")
    add("acr_firewall_403_blob_get", "firewall-data.test/library/hello:1.0", "FIREWALL_FORBIDDEN")
    add("server_error_500_blob_get", "blob500.test/library/hello:1.0", "REGISTRY_ERROR")
    add(
        "blob_missing_404",
        "blobmissing.test/library/hello:1.0",
        "REGISTRY_ERROR",
        ["IMAGE_NOT_FOUND"],
        note="manifest references a blob the registry lacks",
    )
    # --- challenge / token endpoint
    add(
        "challenge_realm_refused",
        "challenge-refused.test/library/hello:1.0",
        "CHALLENGE_ERROR",
        ["CONNECT_REFUSED"],
    )
    add("challenge_token_500", "challenge-500.test/library/hello:1.0", "CHALLENGE_ERROR", ["REGISTRY_ERROR"])
    add("challenge_token_403", "challenge-403.test/library/hello:1.0", *anon_token_403)
    add("challenge_token_403_with_creds", "challenge-403.test/library/hello:1.0", *oauth_token_403,
        args=creds, note="credentials were sent (oauth POST) and the token endpoint refused them")
    add(
        "challenge_unsupported_scheme",
        "challenge-badscheme.test/library/hello:1.0",
        *unauth_401,
        note="WWW-Authenticate: Negotiate; text identical to a plain 401",
    )
    add("challenge_missing_realm", "challenge-norealm.test/library/hello:1.0", "CHALLENGE_ERROR")
    # --- auth
    add("htpasswd_no_credentials", "basic.test/library/hello:1.0", *unauth_401)
    add(
        "htpasswd_wrong_password",
        "basic.test/library/hello:1.0",
        *unauth_401,
        args=["--user", f"{USER}:wrong"],
    )
    add(
        "htpasswd_unknown_user",
        "basic.test/library/hello:1.0",
        *unauth_401,
        args=["--user", "mallory:s3cret"],
    )
    add("token_no_credentials_private_repo", "token.test/team/app:1.0", *pull_denied)
    add(
        "token_wrong_password",
        "token.test/team/app:1.0",
        "CREDENTIALS_REJECTED",
        args=["--user", f"{USER}:wrong"],
    )
    add("token_no_pull_scope", "token.test/team/secret:1.0", *pull_denied, args=creds)
    add("token_no_credentials_missing_repo", "token.test/team/nosuch:1.0", *pull_denied)
    # --- not found
    add("repository_not_found", "registry.test/library/nosuch:1.0", *not_found)
    add("tag_not_found", "registry.test/library/hello:nosuchtag", *not_found)
    add("digest_not_found", f"registry.test/library/hello@{MISSING}", *not_found)
    add("token_authenticated_repository_not_found", "token.test/team/nosuch:1.0", *not_found, args=creds)
    add("htpasswd_tag_not_found", "basic.test/library/hello:2.0", *not_found, args=creds)
    add(
        "platform_not_found",
        "registry.test/library/armonly:1.0",
        "PLATFORM_NOT_FOUND",
        args=["--platform", "linux/amd64"],
    )
    add("platform_not_found_default", "registry.test/library/armonly:1.0", "PLATFORM_NOT_FOUND")
    # --- reference syntax (ctr does not normalise names like kubelet does; no
    # kubelet wrapping is derived since kubelet rejects these as InvalidImageName)
    add(
        "invalid_reference_uppercase",
        "registry.test/Library/Hello:1.0",
        "IMAGE_NOT_FOUND",
        ["INVALID_IMAGE_NAME", "REPOSITORY_NOT_FOUND"],
        derive=False,
        note="ctr sends the upper-case name; the registry answers 404",
    )
    add("invalid_reference_empty_tag", "registry.test/library/hello:", "INVALID_IMAGE_NAME", derive=False)
    add(
        "invalid_reference_bad_digest",
        "registry.test/library/hello@sha256:abc",
        "INVALID_IMAGE_NAME",
        derive=False,
    )
    add("invalid_reference_short_name", "hello", "INVALID_IMAGE_NAME", derive=False)
    return C


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def error_text(stderr: str, stdout: str, rc):
    lines = [ANSI.sub("", ln).rstrip() for ln in stderr.splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith("ctr: ")]
    if errs:
        return errs[-1][len("ctr: ") :].strip()
    if lines:
        return lines[-1].strip()
    out = [ANSI.sub("", ln).strip() for ln in stdout.replace("\r", "\n").splitlines() if ln.strip()]
    return out[-1] if out else ""


# ======================================================================
# inner process
# ======================================================================
class Inner:
    def __init__(self, tmp, out, budget):
        self.tmp, self.out, self.budget = tmp, out, budget
        self.t0 = time.monotonic()
        self.procs, self.servers, self.raw, self.mounts = [], [], [], []
        self.dns = None

    # ---------------------------------------------------------- setup
    def sh(self, *cmd):
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    def net(self):
        self.sh("ip", "link", "set", "lo", "up")
        self.sh("ip", "route", "add", "10.1.2.0/24", "dev", "lo")
        rc = os.path.join(self.tmp, "resolv.conf")
        with open(rc, "w") as f:
            f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        self.sh("mount", "--bind", rc, "/etc/resolv.conf")
        self.dns = DNSStub()
        self.dns.start()
        gr = subprocess.run(
            ["getent", "ahosts", "registry.invalid"], capture_output=True, text=True, timeout=10
        )
        self.system_resolver_note = f"getent ahosts registry.invalid -> exit {gr.returncode}"

    def certs(self):
        import trustme

        d = os.path.join(self.tmp, "certs")
        os.makedirs(d)
        self.ca = trustme.CA(organization_name="pullhealth test CA")
        other = trustme.CA(organization_name="untrusted CA")
        names = [
            "auth.test",
            "fake.test",
            "firewall.test",
            "ratelimit.test",
            "error500.test",
            "unavailable503.test",
            "forbidden.test",
            "challenge-refused.test",
            "challenge-500.test",
            "challenge-403.test",
            "challenge-badscheme.test",
            "challenge-norealm.test",
            "authdown.test",
            "plainhttp.test",
            "hang.test",
            "backlog.test",
            "refused.test",
            "garbage.test",
            "eof.test",
            "oldtls.test",
            "mtls.test",
            "myregistry.azurecr.io",
            "*.azurecr.io",
        ]
        self.leaf = self.ca.issue_cert(*names, *sorted(CONTENT_HOSTS))
        self.reg_leaf = self.ca.issue_cert("registry.test", "basic.test", "token.test")
        self.ca_pem = os.path.join(d, "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_pem)
        self.leaf_pem = os.path.join(d, "leaf.pem")
        self.leaf_key = os.path.join(d, "leaf.key")
        self.reg_leaf.cert_chain_pems[0].write_to_path(self.leaf_pem)
        self.reg_leaf.private_key_pem.write_to_path(self.leaf_key)
        self.untrusted_leaf = other.issue_cert("untrusted.test")
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
        self.expired_leaf = self.ca.issue_cert(
            "expired.test", not_before=past - datetime.timedelta(days=90), not_after=past
        )
        signer = self.ca.issue_cert("pullhealth-token-signer", key_type=trustme.KeyType.RSA)
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        cert = x509.load_pem_x509_certificate(signer.cert_chain_pems[0].bytes())
        self.signer_der = cert.public_bytes(serialization.Encoding.DER)
        self.signer_key = serialization.load_pem_private_key(signer.private_key_pem.bytes(), None)

    def server_ctx(self, leaf):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        leaf.configure_cert(ctx)
        return ctx

    def servers_up(self):
        ip = HOSTS
        self.servers.append(
            start_http(
                (ip["auth.test"], 443),
                TokenHandler,
                self.server_ctx(self.leaf),
                signer_der=self.signer_der,
                signer_key=self.signer_key,
            )
        )
        # distinct content per host: containerd's content store is shared
        # between namespaces, so reused digests would never be fetched again
        content = {}
        for h in sorted(CONTENT_HOSTS):
            blobs, amd64, _, _ = build_images(salt=h)
            content[h] = {"blobs": blobs, "manifest": amd64}
        self.servers.append(
            start_http(
                (ip["fake.test"], 443), FakeRegistryHandler, self.server_ctx(self.leaf), content=content
            )
        )
        self.servers.append(
            start_http((ip["untrusted.test"], 443), FakeRegistryHandler, self.server_ctx(self.untrusted_leaf))
        )
        self.servers.append(
            start_http((ip["expired.test"], 443), FakeRegistryHandler, self.server_ctx(self.expired_leaf))
        )
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.leaf.configure_cert(old)
        try:
            old.set_ciphers("DEFAULT:@SECLEVEL=0")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                old.minimum_version = ssl.TLSVersion.TLSv1
                old.maximum_version = ssl.TLSVersion.TLSv1
            self.servers.append(start_http((ip["oldtls.test"], 443), FakeRegistryHandler, old))
        except (ssl.SSLError, ValueError) as e:
            log("TLS 1.0 server not possible:", e)
        mtls = self.server_ctx(self.leaf)
        mtls.verify_mode = ssl.CERT_REQUIRED
        self.ca.configure_trust(mtls)
        self.servers.append(start_http((ip["mtls.test"], 443), FakeRegistryHandler, mtls))
        for name, beh in (
            ("hang.test", "hang"),
            ("garbage.test", "garbage"),
            ("eof.test", "eof"),
            ("reset.test", "reset"),
            ("backlog.test", "backlog"),
            ("plainhttp.test", "http400"),
        ):
            r = RawServer((ip[name], 443), beh)
            r.start()
            self.raw.append(r)

    def registries_up(self):
        store = os.path.join(self.tmp, "registry-storage")
        os.makedirs(store)
        htp = os.path.join(self.tmp, "htpasswd")
        out = subprocess.run(
            ["htpasswd", "-Bbn", USER, PASSWORD], check=True, capture_output=True, text=True
        ).stdout
        with open(htp, "w") as f:
            f.write(out.strip() + "\n")
        auths = {
            "registry.test": "",
            "basic.test": f"auth:\n  htpasswd:\n    realm: pullhealth-basic\n    path: {htp}\n",
            "token.test": (
                "auth:\n  token:\n    realm: https://auth.test/token\n"
                "    service: token.test\n"
                f"    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {self.ca_pem}\n"
            ),
        }
        binary = registry_binary()
        for name, auth in auths.items():
            cfg = os.path.join(self.tmp, f"registry-{name}.yml")
            with open(cfg, "w") as f:
                f.write(f"""version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {store}
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {HOSTS[name]}:443
  secret: pullhealth-not-a-secret
  tls:
    certificate: {self.leaf_pem}
    key: {self.leaf_key}
{auth}""")
            logf = open(os.path.join(self.tmp, f"registry-{name}.log"), "w")  # noqa: SIM115 (lives with the process)
            self.procs.append(
                subprocess.Popen(
                    [binary, "serve", cfg], stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            )
        for name in auths:
            wait_port(HOSTS[name], 443, 15)

    def push_images(self):
        ctx = ssl.create_default_context(cafile=self.ca_pem)
        wait_port(HOSTS["registry.test"], 443, 5)
        blobs, amd64, arm64, index = build_images()
        om = "application/vnd.oci.image.manifest.v1+json"
        oi = "application/vnd.oci.image.index.v1+json"
        for repo in ("library/hello", "team/app", "team/secret"):
            push(ctx, "registry.test", repo, "1.0", blobs, amd64, om)
        push(ctx, "registry.test", "library/armonly", "1.0", blobs, index, oi, extra_manifests=[(arm64, om)])

    def containerd_up(self):
        d = os.path.join(self.tmp, "ctd")
        os.makedirs(d)
        self.sock = os.path.join(d, "c.sock")
        cfg = os.path.join(d, "config.toml")
        with open(cfg, "w") as f:
            f.write(f"""version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
""")
        logf = open(os.path.join(self.tmp, "containerd.log"), "w")  # noqa: SIM115 (lives with the process)
        self.procs.append(
            subprocess.Popen(
                ["containerd", "--config", cfg],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r = subprocess.run(
                ["ctr", "--address", self.sock, "version"], capture_output=True, text=True, timeout=10
            )
            if r.returncode == 0:
                m = re.search(r"Server:\s*\n\s*Version:\s*(\S+)", r.stdout)
                self.version = m.group(1) if m else "unknown"
                return
            time.sleep(0.3)
        raise RuntimeError("containerd did not start; see containerd.log")

    def hosts_dir(self):
        hd = os.path.join(self.tmp, "hosts.d")
        os.makedirs(os.path.join(hd, "registry.test"))
        with open(os.path.join(hd, "registry.test", "hosts.toml"), "w") as f:
            f.write(
                f'server = "https://registry.test"\n\n[host."https://registry.test"]\n'
                f'  capabilities = ["pull", "resolve"]\n  ca = "{self.ca_pem}"\n'
            )
        return hd

    # ---------------------------------------------------------- run
    def snapshotter(self):
        # overlayfs needs a kernel that allows it here; fall back to native
        r = self.ctr(["plugins", "ls"], 10)
        for line in r[1].splitlines():
            if "overlayfs" in line and "ok" in line:
                return "overlayfs"
        return "native"

    def ctr(self, argv, timeout, global_args=(), resolv=None):
        cmd = ["ctr", "--address", self.sock, *global_args, *argv]
        if resolv:
            # a nested mount namespace with a different resolv.conf for this run only
            rc = os.path.join(self.tmp, "resolv-alt.conf")
            with open(rc, "w") as f:
                f.write(resolv)
            cmd = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                'mount --bind "$0" /etc/resolv.conf && exec "$@"',
                rc,
                *cmd,
            ]
        t = time.monotonic()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
            return p.returncode, p.stdout, p.stderr, time.monotonic() - t, False
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            return None, out, err, time.monotonic() - t, True

    def run_cases(self):
        hd = self.hosts_dir()
        snap = self.snapshotter()
        results = []
        for c in cases():
            remaining = self.budget - 25 - (time.monotonic() - self.t0)
            if remaining < 5:
                log("budget exhausted; skipping", c["mode"])
                continue
            args = []
            if "@no-ca" in c["args"]:
                pass
            elif "@hosts-dir" in c["args"]:
                args += ["--hosts-dir", hd]
            else:
                args += ["--tlscacert", self.ca_pem]
            args += [a for a in c["args"] if not a.startswith("@")]
            g = []
            if c["timeout"]:
                g += ["--timeout", c["timeout"]]
            # a fresh containerd namespace per case so nothing is cached
            ns = "c" + str(len(results))
            argv = ["images", "pull", "--snapshotter", snap, *args, c["ref"]]
            rc, out, err, dt, killed = self.ctr(
                argv, min(40, remaining), ["--namespace", ns, *g], c["resolv"]
            )
            text = error_text(err, out, rc)
            if text.endswith("failed to do request: context deadline exceeded"):
                # the deadline may fire before or during the dial: label by text
                c = dict(
                    c,
                    code="CONNECT_TIMEOUT",
                    candidates=["DNS_TIMEOUT", "PRIVATE_ENDPOINT_DNS", "FIREWALL_FORBIDDEN"],
                )
            results.append(
                dict(
                    c,
                    rc=rc,
                    text=text,
                    seconds=round(dt, 1),
                    killed=killed,
                    argv=argv,
                    global_args=g,
                    stderr=err,
                )
            )
            log(f"{c['mode']:<40} rc={rc} {dt:5.1f}s {text[:150]}")
        # one extra run: no --timeout at all on the backlog server, killed by us
        remaining = self.budget - 25 - (time.monotonic() - self.t0)
        if remaining > 15:
            argv = [
                "images",
                "pull",
                "--snapshotter",
                snap,
                "--tlscacert",
                self.ca_pem,
                "backlog.test/library/hello:1.0",
            ]
            rc, out, err, dt, killed = self.ctr(argv, 8, ["--namespace", "ckill"])
            self.killed_note = dict(
                mode="connect_timeout_killed_by_wrapper",
                killed=killed,
                seconds=round(dt, 1),
                stdout=ANSI.sub("", out)[-400:],
                stderr=err[-400:],
            )
            log("killed-run:", self.killed_note)
        return results

    def write(self, results):
        src = f"containerd {self.version} ctr images pull, recorded by tests/corpus/record.py"
        lines = []
        for r in results:
            if not r["text"]:
                continue
            ref = r["ref"]
            base = {
                "text": r["text"],
                "code": r["code"],
                "candidates": r["candidates"],
                "mode": r["mode"],
                "source": src,
                "runtime": "containerd",
                "ref": ref,
                "derived": False,
                "command": ("ctr " + " ".join(_redact(r["global_args"] + r["argv"]))).replace(
                    self.tmp, "$WORKDIR"
                ),
                "exit_code": r["rc"],
            }
            lines.append(base)
            if r["note"]:
                base["note"] = r["note"]
            if r["code"] == "OK" or not r["derive"]:
                continue
            for wrapping, text in (
                ("kubelet-1.28", f'Failed to pull image "{ref}": {r["text"]}'),
                (
                    "kubelet-pre-1.28",
                    f'Failed to pull image "{ref}": rpc error: code = Unknown desc = '
                    f'failed to pull and unpack image "{ref}": {r["text"]}',
                ),
            ):
                d = dict(base, text=text, derived=True, wrapping=wrapping)
                for k in ("command", "exit_code", "note"):
                    d.pop(k, None)
                lines.append(d)
        # identical texts must carry identical labels, or the corpus contradicts itself
        seen = {}
        for obj in lines:
            label = (obj["code"], tuple(obj["candidates"]))
            if seen.setdefault(obj["text"], label) != label:
                log("WARNING: inconsistent labels for identical text:", obj["mode"], obj["text"][:120])
        os.makedirs(os.path.dirname(self.out), exist_ok=True)
        with open(self.out, "w") as f:
            for obj in lines:
                f.write(json.dumps(obj, sort_keys=False) + "\n")
        meta = {
            "containerd_version": self.version,
            "system_resolver": self.system_resolver_note,
            "dns_queries_seen": len(self.dns.queries),
            "killed_run": getattr(self, "killed_note", None),
            "empty_text_modes": [r["mode"] for r in results if not r["text"]],
        }
        log("meta:", json.dumps(meta))
        log(f"wrote {len(lines)} lines to {self.out}")

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        for s in self.servers:
            with_suppress(s.shutdown)
            with_suppress(s.server_close)
        for r in self.raw:
            r.close()
        if self.dns:
            self.dns.stop.set()
            with_suppress(self.dns.sock.close)
        # unmount anything containerd left mounted under our temp dir
        try:
            with open("/proc/self/mountinfo") as f:
                mps = [ln.split()[4] for ln in f]
            for mp in reversed(mps):
                if mp.startswith(self.tmp):
                    subprocess.run(["umount", "-l", mp], stderr=subprocess.DEVNULL)
        except OSError:
            pass

    def main(self):
        try:
            self.net()
            self.certs()
            self.servers_up()
            self.registries_up()
            self.push_images()
            self.containerd_up()
            results = self.run_cases()
            self.write(results)
            return 0
        finally:
            self.cleanup()


def _redact(argv):
    return [
        re.sub(r"^([^:]+):.*$", r"\1:<password>", a) if i and argv[i - 1] == "--user" else a
        for i, a in enumerate(argv)
    ]


def wait_port(host, port, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{host}:{port} did not open")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--budget", type=int, default=170, help="hard limit for the whole run (s)")
    args = ap.parse_args()
    args.out = os.path.abspath(args.out)
    tmp = os.environ.get(INNER_ENV)
    if not tmp:
        sys.exit(outer(args))
    sys.exit(Inner(tmp, args.out, args.budget).main())


if __name__ == "__main__":
    main()
