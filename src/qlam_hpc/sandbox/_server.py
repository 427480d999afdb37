"""``Sandbox``: the identity provider and tasks API served by uvicorn in a daemon thread of this process."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Literal

import uvicorn

from ._app import create_app
from ._config import SandboxClient, SandboxConfig, SandboxUser
from ._context import SandboxContext
from ._tasks_store import TaskStore

__all__ = ["SANDBOX_SUBJECT_TOKEN_TYPE", "Sandbox"]

# The Custom Token Exchange profile's type the sandbox's exports name: a URI "the tenant owns".
SANDBOX_SUBJECT_TOKEN_TYPE = "urn:qlam-sandbox:subject-jwt"

_START_TIMEOUT = 10.0
# How long stop() lets in-flight requests (say, one sleeping an injected
# latency) finish before uvicorn cancels them.
_GRACEFUL_SHUTDOWN = 2  # seconds (uvicorn takes an int)


class _QuietCancelledRequests(logging.Filter):
    """Drop uvicorn's traceback for a request that stop() cancelled (one sleeping an
    injected latency, say): ending it was the point, not an error of the application."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


_QUIET = _QuietCancelledRequests()


class Sandbox:
    """A running sandbox identity provider on a loopback port::

        with Sandbox() as idp:
            os.environ.update(idp.env())
            ...

    ``start()`` binds the socket itself (port 0 means any free port, so the URL
    is known at once) and returns when the server answers; ``stop()`` shuts it
    down and waits for the thread.  A ``Sandbox`` is started once.

    ``tls=True`` serves https with a throw-away CA made at start, for clients that
    refuse plain-http identity providers (QuEra's SDK does); ``env()`` then names the
    CA in ``SSL_CERT_FILE`` and ``REQUESTS_CA_BUNDLE``, which httpx, requests and
    qlam-hpc all read.
    """

    def __init__(self, config: SandboxConfig | None = None, *, tls: bool = False) -> None:
        self._config = config or SandboxConfig.default()
        self._tls = tls
        self._tls_dir: Any = None
        self.ca_file: str | None = None
        self._url: str | None = None
        self._context: SandboxContext | None = None
        self._store: TaskStore | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> Sandbox:
        if self._server is not None:
            raise RuntimeError("this Sandbox was already started; make a new one")
        sock = self._bind()
        try:
            host, port = sock.getsockname()[:2]
            scheme = "https" if self._tls else "http"
            self._url = f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
            tls_options: dict[str, Any] = self._make_tls(host) if self._tls else {}
            app = create_app(self._config, base_url=self._url)
            self._context = app.state.sandbox
            self._store = app.state.tasks_store
            # log_config=None leaves the host program's logging alone; no access
            # log because request lines may one day carry credentials.
            config = uvicorn.Config(
                app,
                log_config=None,
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN,
                **tls_options,
            )
            self._server = uvicorn.Server(config)
            logging.getLogger("uvicorn.error").addFilter(_QUIET)  # once: a logger keeps a set of filters
            self._thread = threading.Thread(
                target=self._server.run, kwargs={"sockets": [sock]}, name=f"qlam-sandbox-{port}", daemon=True
            )
            self._thread.start()
            self._wait_until_serving()
        except BaseException:
            self.stop()
            sock.close()
            raise
        return self

    def stop(self, *, grace: float = _GRACEFUL_SHUTDOWN) -> None:
        """Stop serving and wait for the server thread; safe to call twice.

        Requests still running get ``grace`` seconds to finish; then they are cancelled.
        """
        if self._server is not None:
            self._server.config.timeout_graceful_shutdown = grace  # type: ignore[assignment]  # read at shutdown
            self._server.should_exit = True
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=grace + 5)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True  # stop waiting for stuck connections
                self._thread.join(timeout=5)
        if self._store is not None and (self._thread is None or not self._thread.is_alive()):
            # Only once nothing serves any more: a state_dir's database is then closed
            # cleanly, ready for the next Sandbox on the same directory.
            self._store.close()
            self._store = None
        if self._tls_dir is not None:
            self._tls_dir.cleanup()
            self._tls_dir = None

    def _make_tls(self, host: str) -> dict[str, str]:
        """A throw-away CA and a certificate it signs for ``host`` (and localhost), in a
        private temporary directory removed by ``stop()``; uvicorn's ssl options."""
        import datetime
        import ipaddress
        import tempfile

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = datetime.datetime.now(datetime.timezone.utc)

        def certificate(
            subject: str,
            key: ec.EllipticCurvePrivateKey,
            issuer: str,
            issuer_key: ec.EllipticCurvePrivateKey,
            *,
            ca: bool,
        ) -> x509.Certificate:
            builder = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            )
            if ca:
                builder = builder.add_extension(
                    x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
                ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            else:
                names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(host))]
                builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False).add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
                )
            return builder.sign(issuer_key, hashes.SHA256())

        ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca = certificate("qlam-hpc sandbox CA", ca_key, "qlam-hpc sandbox CA", ca_key, ca=True)
        leaf = certificate(host, key, "qlam-hpc sandbox CA", ca_key, ca=False)
        self._tls_dir = tempfile.TemporaryDirectory(prefix="qlam-sandbox-tls-")
        pem = serialization.Encoding.PEM
        files = {
            "ca.pem": ca.public_bytes(pem),
            "cert.pem": leaf.public_bytes(pem),
            "key.pem": key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        }
        for name, data in files.items():
            with open(f"{self._tls_dir.name}/{name}", "wb") as handle:
                handle.write(data)
        self.ca_file = f"{self._tls_dir.name}/ca.pem"
        return {"ssl_certfile": f"{self._tls_dir.name}/cert.pem", "ssl_keyfile": f"{self._tls_dir.name}/key.pem"}

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _bind(self) -> socket.socket:
        host = "127.0.0.1" if self._config.host == "localhost" else self._config.host.strip("[]")
        # proto=IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on
        # sockets that say they are TCP, and without it every keep-alive answer
        # waits ~40 ms for Nagle's algorithm and the client's delayed ACK.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            # Lets a fixed --port be reused at once after a restart.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, self._config.port))
        except OSError:
            sock.close()
            raise
        return sock

    def _wait_until_serving(self) -> None:
        assert self._server is not None and self._thread is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the sandbox server stopped while starting; see the log above")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sandbox server did not start within {_START_TIMEOUT:g}s")
            time.sleep(0.005)

    # -- where it is and who may use it --------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._server.should_exit  # type: ignore[union-attr]

    @property
    def config(self) -> SandboxConfig:
        return self._config

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (``https://`` with ``tls``), no trailing slash."""
        if self._url is None:
            raise RuntimeError("the Sandbox is not started; call start() or use it in a with block")
        return self._url

    @property
    def issuer(self) -> str:
        """The ``iss`` of its tokens: the URL with a trailing slash, as Auth0 does."""
        return self.url + "/"

    @property
    def token_url(self) -> str:
        return self.url + "/oauth/token"

    @property
    def audience(self) -> str:
        return self._config.audiences[0]

    @property
    def client(self) -> SandboxClient:
        return self._config.clients[0]

    @property
    def user(self) -> SandboxUser:
        """The first configured user: who ``approve()`` and ``auto_approve`` log in by default."""
        return self._config.users[0]

    @property
    def control_token(self) -> str:
        """The bearer token the ``/_sandbox/`` control routes ask for: only this sandbox's owner has it."""
        if self._context is None:
            raise RuntimeError("the Sandbox is not started; call start() or use it in a with block")
        return self._context.control_token

    def control_headers(self) -> dict[str, str]:
        """``{"Authorization": "Bearer <control token>"}``, for HTTP calls to the control routes
        (and to ``POST /activate``, to approve as the owner from a script)."""
        return {"Authorization": f"Bearer {self.control_token}"}

    @property
    def approve_url(self) -> str:
        """The owner's link: opened once in a browser, it lets that browser approve device logins at
        ``/activate`` (a cookie), until the sandbox stops.  It holds the control token: keep it private."""
        return f"{self.url}/activate?token={self.control_token}"

    def env(
        self,
        client: SandboxClient | str | None = None,
        *,
        flow: Literal["m2m", "device", "token-exchange"] = "m2m",
    ) -> dict[str, str]:
        """The environment a qlam-hpc client needs to use this sandbox.

        ``flow="m2m"``: an M2M client (the first by default) and its secret, if it has one.
        ``flow="token-exchange"``: the same client, ``QLAM_AUTH_FLOW=token-exchange`` and a
        ``QLAM_SUBJECT_TOKEN_TYPE`` the sandbox takes (Auth0 refuses ``urn:ietf`` types in
        Custom Token Exchange, and so does the sandbox); the subject token's source is the caller's.
        ``flow="device"``: a device client id (the first by default), no secret, and
        ``QLAM_AUTH_FLOW=device``; the user logs in with the device code flow.
        """
        if flow == "device":
            client_id = client.client_id if isinstance(client, SandboxClient) else client
            if client_id is None and self._config.device_clients:
                client_id = self._config.device_clients[0]
            if client_id not in self._config.device_clients:
                raise ValueError(f"{client_id!r} is not one of the sandbox's device_clients")
            return {
                "AUTH_BASE_URL": self.url,
                "QLAM_CLIENT_ID": client_id,
                "QLAM_AUDIENCE": self.audience,
                "QLAM_API_URL": self.url,
                "QLAM_AUTH_FLOW": "device",
                **self._trust(),
            }
        if flow == "token-exchange":
            return {
                **self.env(client),
                "QLAM_AUTH_FLOW": "token-exchange",
                "QLAM_SUBJECT_TOKEN_TYPE": SANDBOX_SUBJECT_TOKEN_TYPE,
            }
        if flow != "m2m":
            raise ValueError(f"flow must be 'm2m', 'device' or 'token-exchange', not {flow!r}")
        if isinstance(client, str):
            found = self._config.client(client)
            if found is None:
                raise ValueError(f"{client!r} is not one of the sandbox's M2M clients")
            client = found
        client = client or self.client
        env = {
            "AUTH_BASE_URL": self.url,
            "QLAM_CLIENT_ID": client.client_id,
            "QLAM_AUDIENCE": self.audience,
            "QLAM_API_URL": self.url,
        }
        if client.client_secret is not None:  # a private_key_jwt client has none
            env["QLAM_CLIENT_SECRET"] = client.client_secret
        return {**env, **self._trust()}

    def _trust(self) -> dict[str, str]:
        return {"SSL_CERT_FILE": self.ca_file, "REQUESTS_CA_BUNDLE": self.ca_file} if self.ca_file else {}

    # -- control -------------------------------------------------------------

    @property
    def _state(self):  # type: ignore[no-untyped-def]
        if self._context is None:
            raise RuntimeError("the Sandbox is not started; call start() or use it in a with block")
        return self._context.state

    def stats(self) -> dict[str, Any]:
        """``{"token_requests", "tokens_issued", "token_errors", "scripted_responses", "api_requests",
        "api_scripted_responses", "tasks_created", "device_authorizations", "device_logins",
        "refresh_requests", "refreshes", "reuse_detections", "families_revoked", "revocations",
        "token_exchanges", "exchange_refusals"}`` (``exchange_refusals`` counts by reason)."""
        stats: dict[str, Any] = self._state.stats()
        return stats

    # -- user context ----------------------------------------------------------

    def approve(self, user_code: str, user: str | SandboxUser | None = None) -> None:
        """Approve a pending device login as ``user`` (e-mail or subject; the first user by default).

        ``LookupError`` when ``user_code`` names no pending login; ``ValueError`` for an unknown user.
        """
        self._state.logins.decide(user_code, user, now=time.time())

    def deny(self, user_code: str) -> None:
        """Deny a pending device login: its next poll is answered ``access_denied``."""
        self._state.logins.decide(user_code, deny=True, now=time.time())

    def pending_user_codes(self) -> list[str]:
        """User codes of device logins waiting for a decision, oldest first."""
        codes: list[str] = self._state.logins.pending_user_codes(now=time.time())
        return codes

    def revoke_logins(self, user: str | SandboxUser | None = None) -> int:
        """Revoke every login (of ``user``): their refresh tokens get ``invalid_grant``. The number revoked."""
        revoked: int = self._state.logins.revoke_families(user)
        return revoked

    def set_faults(
        self,
        *,
        latency: float | None = None,
        error_rate: float | None = None,
        script: Iterable[Mapping[str, Any]] | None = None,
        token_lifetime: int | None = None,
        task_duration: float | None = None,
        api_script: Iterable[Mapping[str, Any]] | None = None,
        revoke_tokens_before: float | None = None,
        refresh_token_overlap: float | None = None,
        device_poll_interval: int | None = None,
        auto_approve: bool | None = None,
        response_delay: float | None = None,
    ) -> dict[str, Any]:
        """Change faults at run time (``None`` leaves a setting as is; a script replaces the old one).

        Script items are ``{"status": int, "body": str, "content_type": str, "headers": {...}}``:
        ``script`` is served in order by ``/oauth/token``, ``api_script`` by the tasks
        API, each before processing requests normally.  ``task_duration`` applies to
        tasks created from now on.  ``revoke_tokens_before`` (epoch seconds; 0 turns it
        off) makes the tasks API refuse tokens issued before then.

        User context: ``refresh_token_overlap`` (seconds a used refresh token may still be
        exchanged), ``device_poll_interval`` (for device codes issued from now on),
        ``auto_approve``, and ``response_delay`` (seconds ``/oauth/token`` waits between
        committing a grant and answering).
        Raises ``ValueError`` for invalid values.  Returns the new settings.
        """
        changes: dict[str, Any] = {
            "latency": latency,
            "error_rate": error_rate,
            "token_lifetime": token_lifetime,
            "task_duration": task_duration,
            "revoke_tokens_before": revoke_tokens_before,
            "refresh_token_overlap": refresh_token_overlap,
            "device_poll_interval": device_poll_interval,
            "auto_approve": auto_approve,
            "response_delay": response_delay,
        }
        if script is not None:
            changes["script"] = list(script)
        if api_script is not None:
            changes["api_script"] = list(api_script)
        self._state.update_faults(changes)
        faults: dict[str, Any] = self._state.public_faults()
        return faults

    def reset(self) -> None:
        """Zero the stats and quota usage, clear the scripts, restore the configured faults
        (tasks, device codes and logins stay: a refresh token handed out before still works)."""
        self._state.reset()

    def __repr__(self) -> str:
        where = self._url or "not started"
        return f"<Sandbox {where} clients={len(self._config.clients)}>"
