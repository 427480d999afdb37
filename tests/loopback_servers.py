"""Real servers on 127.0.0.1 for the TLS and deadline tests: a throw-away certificate
authority, an HTTPS identity provider it vouches for, and servers that misbehave on
the wire (one byte at a time, or far too much)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TOKEN_ANSWER = {"access_token": "loopback-token-value", "token_type": "Bearer", "expires_in": 3600}


@dataclass
class Authority:
    """A CA made for one test: ``ca_pem`` is what a site would put in its bundle."""

    ca_pem: Path
    cert_pem: Path
    key_pem: Path


def make_authority(directory: Path, host: str = "127.0.0.1") -> Authority:
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qlam-hpc test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    authority = Authority(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    authority.ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    authority.cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    authority.key_pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return authority


class _Handler(BaseHTTPRequestHandler):
    """An identity provider in miniature: a token for any POST, 404 for GETs (with a Date)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(200, json.dumps(TOKEN_ANSWER).encode())

    def do_GET(self) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        self._send(404, b'{"error": "not_found"}')


class HttpsServer:
    """An HTTPS server on 127.0.0.1 with a certificate from ``authority``; counts connections."""

    def __init__(self, authority: Authority) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(authority.cert_pem, authority.key_pem)
        self.handshakes = 0
        outer = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):  # the handshake is made here, so a refused one is counted
                sock, address = self.socket.accept()
                outer.handshakes += 1
                try:
                    return context.wrap_socket(sock, server_side=True), address
                except (ssl.SSLError, OSError):
                    sock.close()
                    raise

        self.server = Server(("127.0.0.1", 0), _Handler)
        self.server.requests = []  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[str]:
        return self.server.requests  # type: ignore[attr-defined]

    def __enter__(self) -> HttpsServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class RawServer:
    """A TCP server on 127.0.0.1 that answers every connection with ``answer(connection)``.

    ``connections`` counts them; ``served`` holds how long each took."""

    answer: object
    connections: int = 0
    served: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        started = time.monotonic()
        try:
            connection.settimeout(30)
            _read_request(connection)
            self.answer(connection, self._stop)  # type: ignore[operator]
        except OSError:
            pass
        finally:
            self.served.append(time.monotonic() - started)
            connection.close()

    def __enter__(self) -> RawServer:
        threading.Thread(target=self._loop, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.sock.close()


def _read_request(connection: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = connection.recv(65536)
        if not chunk:
            return
        rest += chunk


def drip(message: bytes, every: float):
    """An answer sent one byte every ``every`` seconds: each read finishes well within any
    per-read timeout, so only an overall deadline ends it."""

    def answer(connection: socket.socket, stop: threading.Event) -> None:
        for byte in message:
            if stop.wait(every):
                return
            connection.sendall(bytes([byte]))

    return answer


def flood(status: int = 200, *, content_length: bool = True, size: int = 50 * 1024 * 1024):
    """A fast answer far larger than any token: ``size`` bytes of JSON-looking padding."""

    def answer(connection: socket.socket, stop: threading.Event) -> None:
        head = f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {size}\r\n" if content_length else "Connection: close\r\n"
        connection.sendall(head.encode() + b"\r\n" + b'{"access_token": "')
        block = b"a" * 65536
        sent = 0
        while sent < size and not stop.is_set():
            connection.sendall(block)
            sent += len(block)

    return answer


def token_answer_bytes(body: dict | None = None) -> bytes:
    payload = json.dumps(body or TOKEN_ANSWER).encode()
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
