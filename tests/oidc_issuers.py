"""Identity providers that mint subject tokens for token exchange tests, on loopback.

- ``MockOAuth2Server``: an issuer we did not write, the npm package ``oauth2-mock-server``
  (pinned), run by Node.js. It serves OpenID discovery and a JWKS and signs RS256 JWTs;
  its ``password`` grant sets ``sub`` to the user name, and a documented
  ``beforeTokenSigning`` hook adds the ``aud`` (and ``email``) the test asks for. It is
  installed once into a cache directory (``QLAM_TEST_NPM_CACHE``, default
  ``~/.cache/qlam-hpc-tests``); without Node.js or the npm registry its tests are skipped.
- ``CraftedIssuer``: discovery and a JWKS served by the standard library, and tokens
  signed here with PyJWT, for what no honest issuer mints (``alg=none``, HS256, an unknown
  key, a wrong audience).
- ``GitHubRunner``: GitHub Actions' ID token endpoint as a runner serves it to a job, handing
  out tokens minted by one of the above.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

MOCK_SERVER_PACKAGE = "oauth2-mock-server@9.3.0"

_SCRIPT = """
import { OAuth2Server } from 'oauth2-mock-server';
const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');
// The documented hook: add the audience and e-mail the test names to the token.
server.service.on('beforeTokenSigning', (token, req) => {
  if (req.body && req.body.aud) token.payload.aud = req.body.aud;
  if (req.body && req.body.email) token.payload.email = req.body.email;
  if (req.body && req.body.lifetime) token.payload.exp = token.payload.iat + Number(req.body.lifetime);
});
await server.start(0, '127.0.0.1');
process.stdout.write(server.issuer.url + '\\n');
process.stdin.resume();
process.stdin.on('end', () => server.stop().then(() => process.exit(0)));
"""


def _installed_mock_server() -> Path | None:
    """The directory holding ``node_modules/oauth2-mock-server``, installing it on first use."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return None
    base = Path(os.environ.get("QLAM_TEST_NPM_CACHE") or Path.home() / ".cache" / "qlam-hpc-tests")
    target = base / MOCK_SERVER_PACKAGE.replace("@", "-")
    if (target / "node_modules" / "oauth2-mock-server" / "package.json").exists():
        return target
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".install-", dir=base))
    try:
        subprocess.run(
            [
                "npm",
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
                str(staging),
                MOCK_SERVER_PACKAGE,
            ],
            check=True,
            capture_output=True,
            timeout=180,
        )
        (staging / "issuer.mjs").write_text(_SCRIPT, encoding="utf-8")
        with contextlib.suppress(OSError):  # another run may have won the race: keep theirs
            staging.rename(target)
    except (OSError, subprocess.SubprocessError):
        return None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target if target.exists() else None


class MockOAuth2Server:
    """``oauth2-mock-server`` on a loopback port, in its own Node.js process."""

    def __init__(self) -> None:
        home = _installed_mock_server()
        if home is None:
            pytest.skip("oauth2-mock-server (npm) cannot be installed here: Node.js or the npm registry is missing")
        script = home / "issuer.mjs"
        if not script.exists():
            script.write_text(_SCRIPT, encoding="utf-8")
        self._process = subprocess.Popen(
            ["node", str(script)], cwd=home, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline().strip()
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError("oauth2-mock-server did not start")
        self.url = line  # its issuer: http://localhost:<port>, no trailing slash

    def mint(self, subject: str, audience: str, *, email: str | None = None, lifetime: int | None = None) -> str:
        """An RS256 JWT for ``subject`` with ``aud`` = ``audience``, from the server's token endpoint."""
        form = {"grant_type": "password", "username": subject, "aud": audience, "client_id": "ci"}
        if email:
            form["email"] = email
        if lifetime:
            form["lifetime"] = str(lifetime)
        answer = httpx.post(self.url + "/token", data=form, timeout=10)
        answer.raise_for_status()
        token: str = answer.json()["access_token"]
        return token

    def stop(self) -> None:
        if self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def send_json(handler: BaseHTTPRequestHandler, body: object) -> None:
    """Answer ``handler``'s request: 200, ``body`` as JSON."""
    data = json.dumps(body).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class CraftedIssuer:
    """Discovery and a JWKS on loopback; tokens signed here, honest or not."""

    def __init__(self, *, trailing_slash: bool = False) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.requests += 1
                if self.path == "/.well-known/openid-configuration":
                    body: dict[str, Any] = {"issuer": issuer.url, "jwks_uri": issuer.base + "/jwks"}
                elif self.path == "/jwks":
                    body = {"keys": issuer.jwks()}
                else:
                    self.send_error(404)
                    return
                send_json(self, body)

            def log_message(self, *args: object) -> None:
                pass

        self.requests = 0
        self.published = ["rsa-1", "ec-1"]
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.url = self.base + ("/" if trailing_slash else "")
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def jwks(self) -> list[dict[str, Any]]:
        keys = []
        if "rsa-1" in self.published:
            keys.append({**RSAAlgorithm.to_jwk(self.rsa.public_key(), as_dict=True), "kid": "rsa-1", "use": "sig"})
        if "ec-1" in self.published:
            keys.append({**ECAlgorithm.to_jwk(self.ec.public_key(), as_dict=True), "kid": "ec-1", "use": "sig"})
        return keys

    def claims(self, subject: str, audience: str, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        return {"iss": self.url, "sub": subject, "aud": audience, "iat": now, "nbf": now, "exp": now + 300, **extra}

    def mint(self, claims: dict[str, Any], *, alg: str = "RS256", kid: str | None = "rsa-1", key: Any = None) -> str:
        if key is None:
            key = self.ec if alg.startswith("ES") else self.rsa
        headers = {"kid": kid} if kid else {}
        return jwt.encode(claims, key, algorithm=alg, headers=headers)

    def unsigned(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, None, algorithm="none", headers={"kid": "rsa-1"})

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class GitHubRunner:
    """GitHub Actions' ID token endpoint as the runner serves it to a job (``ACTIONS_ID_TOKEN_REQUEST_URL``):
    the job's request token as a bearer, the audience as a query parameter. It answers with
    ``mint(audience)`` (``None`` when the request named no audience), and keeps the audiences
    asked for in ``audiences``; a wrong request token is refused with 403."""

    def __init__(self, request_token: str, mint: Callable[[str | None], str]) -> None:
        runner = self
        self.audiences: list[str | None] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.headers.get("Authorization") != f"bearer {request_token}":
                    self.send_error(403)
                    return
                audience = parse_qs(urlsplit(self.path).query).get("audience", [None])[0]
                runner.audiences.append(audience)
                send_json(self, {"value": mint(audience)})

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/_apis/pipelines/idtoken?api-version=2.0"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def mock_oauth2_server() -> Iterator[MockOAuth2Server]:
    server = MockOAuth2Server()
    try:
        yield server
    finally:
        server.stop()
