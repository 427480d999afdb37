"""Secret sources: where a client secret or a private key is kept, read only when a token must be fetched.

Settings hold *references* (a ``SecretSource``), made from the environment without
any I/O, so a warm cache hit never reads a file or calls Vault. ``resolve()`` reads
the value when the provider is about to ask the identity provider. One notation
serves the secret and the key (``QLAM_CLIENT_SECRET``, ``QLAM_CLIENT_PRIVATE_KEY``,
and ``client_secret`` in QLAM Shell's config.json)::

    a literal value              the value itself
    literal:VALUE                VALUE itself, whatever it looks like (a secret that starts with
                                 ``env:`` or ``file:``, or looks like a URL)
    env:NAME                     another environment variable (as QLAM Shell's config.json does)
    file:PATH                    a file only its owner may read (what the *_FILE variables name)
    vault://MOUNT/PATH#FIELD     a field of a HashiCorp Vault KV v2 secret (hvac, the ``vault`` extra)
    aws-sm://SECRET-ID#FIELD     AWS Secrets Manager; without #FIELD the whole SecretString
                                 (boto3, the ``aws`` extra)

Any other ``scheme://`` is refused (exit 3, naming the known schemes), never sent to the
identity provider as the secret: ``vualt://secret/qlam#x`` is a typo, not a secret.

Values from Vault and AWS are kept for the rest of the process (one call per process,
not one per fetch); ``resolve(fresh=True)`` asks again, which the provider does once
when the identity provider answers ``invalid_client``: the secret may have been rotated.
Files are read again at every resolve, so a replaced file is seen at the next fetch.

A file is trusted only if no one but its reader (or root) could have put its content
there: it must belong to the reader or to root, be neither readable nor writable by group
or others, and every directory and symbolic link on the way to it must belong to the
reader or to root and not be writable by others (unless sticky, as ``/tmp`` is: there
others cannot rename or delete what is not theirs). Otherwise another user could swap
in their own secret or key — and receive the tokens issued to it, or learn what this
process sends. The rules are OpenSSH's ``StrictModes``, applied to the whole path.

No message, log line or exception here holds a secret: they name variables, paths,
URLs and field names only, and backend errors are re-raised ``from None``.
"""

from __future__ import annotations

# _thread, not threading: this module is imported on the warm token path when a *_FILE
# variable or a reference is set, and threading's import costs that path milliseconds.
import _thread
import os

from ._errors import ConfigurationError, SecretStoreUnreachable

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Mapping
    from typing import Any, NoReturn

__all__ = [
    "Secret",
    "SecretSource",
    "EnvSecret",
    "FileSecret",
    "VaultSecret",
    "AwsSecret",
    "SecretStoreUnreachable",
    "parse_reference",
    "secret_source",
    "SECRET_REFERENCE_PREFIXES",
    "LITERAL_PREFIX",
]

# A value with one of these prefixes names where a secret is kept (see _secrets.py), not the secret.
SECRET_REFERENCE_PREFIXES = ("env:", "file:", "vault://", "aws-sm://")
# The prefix that says "the rest is the secret itself", for a secret that looks like a reference.
LITERAL_PREFIX = "literal:"
_KNOWN_SOURCES = "env:NAME, file:PATH, vault://MOUNT/PATH#FIELD or aws-sm://SECRET-ID#FIELD"


class Secret:
    """A secret value that never shows itself in a repr, a log line or a traceback.

    It is also the simplest secret source: ``resolve()`` gives the secret itself. The
    others (a file, Vault, AWS Secrets Manager, see ``_secrets.py``) fetch theirs only
    when a token must be fetched. ``origin`` says where the value came from, for messages.
    """

    __slots__ = ("_value", "origin")

    def __init__(self, value: str, origin: str | None = None) -> None:
        self._value = value
        self.origin = origin

    def reveal(self) -> str:
        return self._value

    def resolve(self, *, fresh: bool = False) -> Secret:
        return self

    def describe(self) -> str:
        return self.origin or "a literal value"

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> NoReturn:
        # Secrets do not travel through pickles (multiprocessing, logging queues).
        raise TypeError("a Secret cannot be pickled")


def secret_source(value: str, origin: str, env: Mapping[str, str]) -> Secret | SecretSource:
    """A ``Secret`` for a literal value (or ``literal:VALUE``); a ``SecretSource`` for ``env:``,
    ``file:``, ``vault://`` and ``aws-sm://`` references (``origin`` names where the value was
    found, for messages). Any other ``scheme://`` is a ``ConfigurationError``."""
    if value.startswith(LITERAL_PREFIX):
        return Secret(value[len(LITERAL_PREFIX) :], origin)
    if value.startswith(SECRET_REFERENCE_PREFIXES):
        return parse_reference(value, origin=origin, env=env)
    scheme = _unknown_scheme(value)
    if scheme is not None:
        raise ConfigurationError(
            f"{origin}: {scheme}:// is not a secret source{_did_you_mean(scheme)}; the known ones are "
            f"{_KNOWN_SOURCES} (a secret that really starts with {scheme}:// is written {LITERAL_PREFIX}VALUE)"
        )
    return Secret(value, origin)


def _unknown_scheme(value: str) -> str | None:
    """The scheme of a ``scheme://`` value (RFC 3986's letters), or None for anything else.

    Only the scheme is ever shown: it is what was mistyped, and it is no secret's middle."""
    scheme, separator, _ = value.partition("://")
    if not separator or not 0 < len(scheme) <= 32 or not scheme[0].isascii() or not scheme[0].isalpha():
        return None
    if not all(c.isascii() and (c.isalnum() or c in "+-.") for c in scheme):
        return None
    return scheme


def _did_you_mean(scheme: str) -> str:
    import difflib

    close = difflib.get_close_matches(scheme.lower(), ("vault", "aws-sm", "file", "env"), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}{':' if close[0] in ('file', 'env') else '://'}?)" if close else ""


# Values fetched from Vault or AWS in this process, by source: a job step that refreshes
# its token calls the secret store once, not at every fetch.
_remembered: dict[tuple[object, ...], Secret] = {}
_remembered_lock = _thread.allocate_lock()


class SecretSource:
    """Names a secret kept elsewhere. ``resolve()`` reads it; ``describe()`` names it safely.

    ``origin`` is the setting that named the source (``QLAM_CLIENT_SECRET_FILE``, ...), for
    messages. Sources compare by where they point, never by value, and do not pickle:
    one that reads the environment holds a reference to it.
    """

    __slots__ = ("origin", "_env")
    remembered = False  # True: the value is kept for the process (remote stores)

    def __init__(self, *, origin: str, env: Mapping[str, str] | None = None) -> None:
        self.origin = origin
        self._env = os.environ if env is None else env

    def _where(self) -> tuple[object, ...]:
        raise NotImplementedError

    def _read(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def resolve(self, *, fresh: bool = False) -> Secret:
        """The secret, read now (or, for a remote store, as read earlier in this process)."""
        key = (type(self).__name__, *self._where())
        if self.remembered and not fresh:
            with _remembered_lock:
                known = _remembered.get(key)
            if known is not None:
                return known
        value = self._read()
        if not value:
            raise ConfigurationError(f"{self.describe()} (named by {self.origin}) is empty")
        secret = Secret(value, f"{self.describe()} (named by {self.origin})")
        if self.remembered:
            with _remembered_lock:
                _remembered[key] = secret
        return secret

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._where() == self._where()

    def __hash__(self) -> int:
        return hash((type(self).__name__, *self._where()))

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"a {type(self).__name__} cannot be pickled")


def parse_reference(value: str, *, origin: str, env: Mapping[str, str] | None = None) -> SecretSource:
    """The source a reference names (``env:``, ``file:``, ``vault://``, ``aws-sm://``); syntax only, no I/O."""
    scheme, _, rest = value.partition(":")
    if scheme == "env":
        name = rest.strip()
        if not name or not all(c.isalnum() or c == "_" for c in name):
            raise ConfigurationError(f"{origin}: env:NAME needs an environment variable name")
        return EnvSecret(name, origin=origin, env=env)
    if scheme == "file":
        path = rest.strip()
        if not path:
            raise ConfigurationError(f"{origin}: file:PATH needs a path")
        return FileSecret(os.path.expanduser(path), origin=origin)
    if scheme == "vault":
        return VaultSecret.parse(value, origin=origin, env=env)
    if scheme == "aws-sm":
        return AwsSecret.parse(value, origin=origin, env=env)
    raise ConfigurationError(f"{origin}: unknown secret reference {scheme}:")  # pragma: no cover


# --- the environment and files ------------------------------------------------------------


class EnvSecret(SecretSource):
    """``env:NAME``: the value of another environment variable."""

    __slots__ = ("name",)

    def __init__(self, name: str, *, origin: str, env: Mapping[str, str] | None = None) -> None:
        super().__init__(origin=origin, env=env)
        self.name = name

    def _where(self) -> tuple[object, ...]:
        return (self.name,)

    def describe(self) -> str:
        return f"environment variable {self.name}"

    def _read(self) -> str:
        value = self._env.get(self.name)
        if value is None:
            raise ConfigurationError(f"{self.origin} names env:{self.name}, but {self.name} is not set")
        return value


class FileSecret(SecretSource):
    """A file readable by its owner only; one trailing newline (``echo ... >``) is dropped."""

    __slots__ = ("path",)

    def __init__(self, path: str, *, origin: str) -> None:
        super().__init__(origin=origin)
        self.path = path

    def _where(self) -> tuple[object, ...]:
        return (self.path,)

    def describe(self) -> str:
        return f"file {self.path}"

    def _read(self) -> str:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise ConfigurationError(f"{self.origin}: {self.path} does not exist") from None
        except OSError as exc:
            raise ConfigurationError(f"{self.origin}: cannot read {self.path} ({exc.strerror})") from None
        try:
            # fstat of the open file, not stat of the name: the checked file is the read file.
            check_trusted_file(self.path, os.fstat(fd), self.origin)
            chunks = []
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(fd)
        try:
            text = b"".join(chunks).decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigurationError(f"{self.origin}: {self.path} is not UTF-8 text") from None
        return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text

    def _check_the_way_to(self, opened: os.stat_result) -> None:
        _check_the_way_to(self.path, self.origin, opened)


def check_trusted_file(path: str, opened: os.stat_result, origin: str, *, private: bool = True) -> None:
    """Refuse a file that someone other than its reader (or root) could have written (see the
    module's docstring); ``opened`` is ``fstat`` of the open file. ``private``: refuse it
    also when group or others can read it (a secret); otherwise only when they can write it
    (a file that decides where a secret goes, as QLAM Shell's config.json does)."""
    import stat

    if not stat.S_ISREG(opened.st_mode):
        raise ConfigurationError(f"{origin}: {path} is not a regular file")
    if opened.st_uid not in (os.geteuid(), 0):
        raise ConfigurationError(
            f"{origin}: {path} belongs to uid {opened.st_uid}, not to you (uid {os.geteuid()}) "
            f"or root, who could replace it; refusing to use it: chown {os.geteuid()} {path}"
        )
    if opened.st_mode & (0o066 if private else 0o022):
        what = "readable" if private and opened.st_mode & 0o044 else "writable"
        fix = "chmod 600" if private else "chmod go-w"
        raise ConfigurationError(
            f"{origin}: {path} is {what} by group or others "
            f"(mode {stat.S_IMODE(opened.st_mode):04o}); refusing to use it: {fix} {path}"
        )
    _check_the_way_to(path, origin, opened)


def _check_the_way_to(file: str, origin: str, opened: os.stat_result) -> None:
    """Refuse the file if someone other than its reader or root could replace it: through a
    directory on the way (as written, and as resolved) or a symbolic link they own."""
    import stat

    trusted = (os.geteuid(), 0)
    path = os.path.abspath(file)
    real = os.path.realpath(path)
    # The path as written (links show as links) and as resolved (the real directories).
    written = [(name, os.lstat) for name in _ancestors(path, True)]
    resolved = [(name, os.stat) for name in _ancestors(real, False)]
    for name, look in written + resolved:
        try:
            info = look(name)
        except OSError as exc:
            raise ConfigurationError(f"{origin}: cannot check {name}, on the way to {file} ({exc.strerror})") from None
        if stat.S_ISLNK(info.st_mode):
            if info.st_uid not in trusted:  # its directory is checked too: only its owner can re-point it
                raise ConfigurationError(
                    f"{origin}: {file} goes through the symbolic link {name}, which belongs to uid "
                    f"{info.st_uid}, who could re-point it; refusing to use it: name the file by its own path"
                )
            continue
        if name in (path, real):
            continue  # the file itself: checked on its descriptor
        if info.st_uid not in trusted:
            raise ConfigurationError(
                f"{origin}: {file} is in {name}, which belongs to uid {info.st_uid}, who could "
                "replace the file; refusing to use it: keep it in a directory of your own"
            )
        if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            raise ConfigurationError(
                f"{origin}: {file} is in {name}, which other users can write to "
                f"(mode {stat.S_IMODE(info.st_mode):04o}) and so replace the file; refusing to use it: "
                f"chmod go-w {name}, or keep the file in a directory only you can write"
            )
    try:
        same = os.stat(real)
    except OSError:
        same = None
    if same is None or (same.st_dev, same.st_ino) != (opened.st_dev, opened.st_ino):
        raise ConfigurationError(f"{origin}: {file} changed while it was read; refusing to use it")


def _ancestors(path: str, include_self: bool) -> list[str]:
    """``/a/b/c`` -> ``[/a/b/c,] /a/b, /a, /``: the path's own name first, then each directory above it."""
    names = [path] if include_self else []
    while True:
        parent = os.path.dirname(path)
        if parent == path:
            return names
        names.append(parent)
        path = parent


# --- HashiCorp Vault and OpenBao ------------------------------------------------------------

# OpenBao (Vault's open-source fork, same API) names its variables BAO_*; Vault's win.
VAULT_CA_SETTINGS = ("VAULT_CACERT", "VAULT_CAPATH", "BAO_CACERT", "BAO_CAPATH")


def vault_setting(env: Mapping[str, str], name: str) -> str | None:
    """``VAULT_<name>``, else ``BAO_<name>``: the variable Vault's and OpenBao's tools read."""
    return env.get(f"VAULT_{name}") or env.get(f"BAO_{name}") or None


class VaultServer:
    """The Vault server and login that Vault's own variables name, for the ``vault://``
    secret source and the Vault token store alike (``_stores/_vault.py``): one reading of
    ``VAULT_ADDR``, ``VAULT_NAMESPACE``, ``VAULT_CACERT``/``VAULT_CAPATH`` and the login, so
    the two can never disagree about where Vault is or who logs in (``BAO_*`` too).

    The login is ``VAULT_TOKEN``; else AppRole, ``VAULT_ROLE_ID`` with ``VAULT_SECRET_ID``
    (or ``VAULT_SECRET_ID_FILE``) at ``VAULT_APPROLE_MOUNT`` (default ``approle``); else
    ``~/.vault-token``, which ``vault login`` and ``bao login`` write. Nothing here holds a
    token in a message: they name variables and the address only.
    """

    def __init__(self, env: Mapping[str, str], what: str, origin: str) -> None:
        from ._tls import ca_setting
        from ._urls import base_url_for

        address = vault_setting(env, "ADDR")
        if not address:
            raise ConfigurationError(f"{origin} names {what}, but VAULT_ADDR is not set")
        # What the login needs, read now: a store made from the environment keeps using the
        # login it was made with, whatever the process does to os.environ later.
        self.env = {k: v for k, v in env.items() if k.startswith(("VAULT_", "BAO_")) or k == "HOME"}
        self.address = base_url_for(address, "VAULT_ADDR" if env.get("VAULT_ADDR") else "BAO_ADDR")
        self.namespace = vault_setting(env, "NAMESPACE")
        # As hvac and the vault CLI read them: VAULT_CACERT, else VAULT_CAPATH; without
        # either, requests' default trust (REQUESTS_CA_BUNDLE, certifi).
        self.trust = ca_setting(env, VAULT_CA_SETTINGS)
        self.what = what
        self.origin = origin

    @property
    def login_kind(self) -> str:
        """Which login the variables choose, by name: for messages and ``doctor``."""
        env = self.env
        if vault_setting(env, "TOKEN"):
            return "VAULT_TOKEN" if env.get("VAULT_TOKEN") else "BAO_TOKEN"
        if vault_setting(env, "ROLE_ID"):
            return "AppRole (VAULT_ROLE_ID)"
        return "~/.vault-token"

    def hvac(self) -> Any:
        """The hvac module (the ``vault`` extra), or a ``ConfigurationError`` saying to install it."""
        try:
            import hvac
            import hvac.exceptions
        except ImportError:
            raise ConfigurationError(
                f"{self.origin} names {self.what}, but hvac is not installed: pip install 'qlam-hpc[vault]'"
            ) from None
        return hvac

    def client(self, timeout: float = 10.0) -> Any:
        """An hvac client, logged in; hvac's and requests' exceptions pass through (each caller
        says what they mean to it, ``failure`` the common ones). Needs the ``vault`` extra."""
        hvac = self.hvac()
        client = hvac.Client(
            url=self.address,
            namespace=self.namespace,
            verify=self.trust[1] if self.trust else True,
            timeout=timeout,
        )
        client.token = self._login(client)
        return client

    def static_token(self) -> str | None:
        """The token a login needs no request for: ``VAULT_TOKEN`` (``BAO_TOKEN``), else, unless
        AppRole is set, ``~/.vault-token``; None when there is none (or AppRole is to log in)."""
        token = vault_setting(self.env, "TOKEN")
        if token:
            return token
        if vault_setting(self.env, "ROLE_ID"):
            return None
        home = self.env.get("HOME") or os.path.expanduser("~")
        try:
            with open(os.path.join(home, ".vault-token"), encoding="utf-8") as file:
                return file.read(4096).strip() or None
        except OSError:
            return None

    def _login(self, client: Any) -> str:
        env = self.env
        token = self.static_token()
        if token:
            return token
        role_id = vault_setting(env, "ROLE_ID")
        if role_id:
            secret_id = vault_setting(env, "SECRET_ID")
            secret_id_file = vault_setting(env, "SECRET_ID_FILE")
            if not secret_id and secret_id_file:
                secret_id = FileSecret(secret_id_file, origin="VAULT_SECRET_ID_FILE")._read()
            answer = client.auth.approle.login(
                role_id=role_id,
                secret_id=secret_id or None,
                mount_point=vault_setting(env, "APPROLE_MOUNT") or "approle",
            )
            return str(answer["auth"]["client_token"])
        raise ConfigurationError(
            f"no Vault login for {self.what} at {self.address}: "
            "set VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID (AppRole)"
        )

    def failure(
        self, exc: BaseException, unreachable: type[SecretStoreUnreachable] = SecretStoreUnreachable
    ) -> Exception | None:
        """What a transport failure means, or None for other exceptions: a ``TlsError`` (a
        certificate or a plain-http server: a setting, never retried), ``unreachable`` for an
        outage (down, sealed, timing out), ``ConfigurationError`` for an unusable CA bundle."""
        import hvac.exceptions
        import requests

        address = self.address
        outage = (hvac.exceptions.VaultDown, hvac.exceptions.InternalServerError, hvac.exceptions.BadGateway)
        if isinstance(exc, outage):
            return unreachable(f"Vault at {address} is unavailable (sealed or failing)")
        if isinstance(exc, requests.exceptions.RequestException):
            from ._tls import failure

            tls = failure(exc, address, self.trust, names="VAULT_CACERT (or VAULT_CAPATH)")
            if tls is not None:
                return tls
            return unreachable(f"Vault at {address} is unreachable ({type(exc).__name__})")
        if isinstance(exc, OSError):  # an unusable VAULT_CACERT: requests raises it while sending
            return ConfigurationError(
                f"the CA bundle named by VAULT_CACERT or VAULT_CAPATH cannot be used for Vault at {address} "
                f"({exc.strerror or type(exc).__name__})"
            )
        return None


class VaultSecret(SecretSource):
    """``vault://MOUNT/PATH#FIELD``: a field of a KV version 2 secret.

    The server and login come from Vault's own variables (``VaultServer``): ``VAULT_ADDR``,
    ``VAULT_NAMESPACE``, ``VAULT_CACERT``, and ``VAULT_TOKEN`` (else ``~/.vault-token``), or
    AppRole; OpenBao's ``BAO_*`` names too. Without ``#FIELD`` the secret must hold exactly
    one field.
    """

    __slots__ = ("mount", "path", "field")
    remembered = True

    def __init__(
        self, mount: str, path: str, field: str | None, *, origin: str, env: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(origin=origin, env=env)
        self.mount, self.path, self.field = mount, path, field

    @classmethod
    def parse(cls, value: str, *, origin: str, env: Mapping[str, str] | None = None) -> VaultSecret:
        location, _, field = value[len("vault://") :].partition("#")
        mount, _, path = location.strip("/").partition("/")
        if not mount or not path:
            raise ConfigurationError(
                f"{origin}: a Vault reference is vault://MOUNT/PATH#FIELD, e.g. vault://secret/qlam#client_secret"
            )
        return cls(mount, path, field or None, origin=origin, env=env)

    def _where(self) -> tuple[object, ...]:
        env = self._env
        return (self.mount, self.path, self.field, vault_setting(env, "ADDR"), vault_setting(env, "NAMESPACE"))

    def describe(self) -> str:
        field = f"#{self.field}" if self.field else ""
        return f"vault://{self.mount}/{self.path}{field}"

    def _read(self) -> str:
        server = VaultServer(self._env, self.describe(), self.origin)
        what = f"{self.describe()} at {server.address}"
        hvac = server.hvac()
        try:
            client = server.client()
            answer = client.secrets.kv.v2.read_secret_version(
                path=self.path, mount_point=self.mount, raise_on_deleted_version=True
            )
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized):
            raise ConfigurationError(
                f"Vault refused to read {what} (permission denied): check the token or role"
            ) from None
        except hvac.exceptions.InvalidPath:
            raise ConfigurationError(f"Vault has no secret {what} (is it a KV version 2 mount?)") from None
        except hvac.exceptions.InvalidRequest:
            raise ConfigurationError(
                f"Vault refused the request for {what} (invalid request: check the login)"
            ) from None
        except Exception as exc:
            known = server.failure(exc)
            if known is not None:
                raise known from None
            if isinstance(exc, hvac.exceptions.VaultError):
                raise SecretStoreUnreachable(
                    f"Vault at {server.address} answered with an error ({type(exc).__name__})"
                ) from None
            raise
        data = ((answer or {}).get("data") or {}).get("data")
        if not isinstance(data, dict):
            raise ConfigurationError(f"Vault's answer for {what} holds no KV version 2 data")
        return _field(data, self.field, what)


# --- AWS Secrets Manager --------------------------------------------------------------------


class AwsSecret(SecretSource):
    """``aws-sm://SECRET-ID#FIELD``: a secret of AWS Secrets Manager (name or ARN).

    Credentials, region and endpoint follow the standard AWS configuration (``AWS_PROFILE``,
    ``AWS_ACCESS_KEY_ID``, instance roles, ``AWS_REGION``, ``AWS_ENDPOINT_URL``); an ARN's
    region wins. With ``#FIELD`` the SecretString is a JSON object and FIELD one of its keys.
    """

    __slots__ = ("secret_id", "field")
    remembered = True

    def __init__(self, secret_id: str, field: str | None, *, origin: str, env: Mapping[str, str] | None = None) -> None:
        super().__init__(origin=origin, env=env)
        self.secret_id, self.field = secret_id, field

    @classmethod
    def parse(cls, value: str, *, origin: str, env: Mapping[str, str] | None = None) -> AwsSecret:
        rest = value[len("aws-sm://") :]
        secret_id, separator, field = rest.rpartition("#")
        if not separator:
            secret_id, field = rest, ""
        if not secret_id:
            raise ConfigurationError(
                f"{origin}: an AWS reference is aws-sm://SECRET-ID#FIELD, e.g. aws-sm://qlam/hpc#client_secret"
            )
        return cls(secret_id, field or None, origin=origin, env=env)

    def _where(self) -> tuple[object, ...]:
        return (self.secret_id, self.field, self._endpoint(), self._region())

    def describe(self) -> str:
        field = f"#{self.field}" if self.field else ""
        return f"aws-sm://{self.secret_id}{field}"

    def _region(self) -> str | None:
        if self.secret_id.startswith("arn:"):
            parts = self.secret_id.split(":")
            if len(parts) > 3 and parts[3]:
                return parts[3]
        return self._env.get("AWS_REGION") or self._env.get("AWS_DEFAULT_REGION") or None

    def _endpoint(self) -> str | None:
        return self._env.get("AWS_ENDPOINT_URL_SECRETS_MANAGER") or self._env.get("AWS_ENDPOINT_URL") or None

    def _read(self) -> str:
        try:
            import boto3
            import botocore.config
            import botocore.exceptions as aws
        except ImportError:
            raise ConfigurationError(
                f"{self.origin} names an AWS Secrets Manager secret, but boto3 is not installed: "
                "pip install 'qlam-hpc[aws]'"
            ) from None
        env = self._env
        what = self.describe()
        try:
            session = boto3.session.Session(
                aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
                aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
                aws_session_token=env.get("AWS_SESSION_TOKEN") or None,
                profile_name=env.get("AWS_PROFILE") or None,
                region_name=self._region(),
            )
            client = session.client(
                "secretsmanager",
                endpoint_url=self._endpoint(),
                config=botocore.config.Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 3}),
            )
            with _BotocoreBodiesUnlogged():
                answer = client.get_secret_value(SecretId=self.secret_id)
        except aws.NoRegionError:
            raise ConfigurationError(f"no AWS region for {what}: set AWS_REGION or use the secret's ARN") from None
        except (aws.NoCredentialsError, aws.PartialCredentialsError):
            raise ConfigurationError(
                f"no AWS credentials to read {what} (AWS_PROFILE, AWS_ACCESS_KEY_ID, an instance role, ...)"
            ) from None
        except aws.ProfileNotFound:
            raise ConfigurationError(f"AWS_PROFILE names a profile that does not exist (reading {what})") from None
        except aws.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if status >= 500 or code in ("InternalServiceError", "ThrottlingException", "ServiceUnavailable"):
                raise SecretStoreUnreachable(f"AWS Secrets Manager is unavailable reading {what} ({code})") from None
            raise ConfigurationError(f"AWS Secrets Manager refused to give {what} ({code})") from None
        except aws.BotoCoreError as exc:  # connection failures, timeouts, bad endpoint URL
            raise SecretStoreUnreachable(
                f"AWS Secrets Manager is unreachable reading {what} ({type(exc).__name__})"
            ) from None
        text = answer.get("SecretString")
        if text is None and answer.get("SecretBinary") is not None:
            try:
                text = bytes(answer["SecretBinary"]).decode("utf-8")
            except UnicodeDecodeError:
                raise ConfigurationError(f"{what} is binary, not UTF-8 text") from None
        if not isinstance(text, str):
            raise ConfigurationError(f"AWS Secrets Manager's answer for {what} holds no secret")
        if self.field is None:
            return text
        import json

        try:
            data = json.loads(text)
        except ValueError:
            raise ConfigurationError(f"{what}: #{self.field} needs a JSON object in the SecretString") from None
        if not isinstance(data, dict):
            raise ConfigurationError(f"{what}: #{self.field} needs a JSON object in the SecretString")
        return _field(data, self.field, what)


class _BotocoreBodiesUnlogged:
    """botocore logs whole response bodies at DEBUG, and a secret's body is the secret:
    drop those records while the secret is read, whatever logging the host program set up."""

    _LOGGERS = ("botocore.parsers", "botocore.endpoint", "botocore.hooks")

    def __enter__(self) -> _BotocoreBodiesUnlogged:
        import logging

        self._filter = logging.Filter("no-such-logger")  # passes nothing from these loggers
        for name in self._LOGGERS:
            logging.getLogger(name).addFilter(self._filter)
        return self

    def __exit__(self, *exc_info: object) -> None:
        import logging

        for name in self._LOGGERS:
            logging.getLogger(name).removeFilter(self._filter)


def _field(data: dict[str, Any], field: str | None, what: str) -> str:
    """One string field of a secret's key/value data; without ``field``, its only field."""
    if field is None:
        if len(data) != 1:
            names = ", ".join(sorted(map(str, data))) or "none"
            raise ConfigurationError(f"{what} holds several fields ({names}): name one with #FIELD")
        field = next(iter(data))
    if field not in data:
        names = ", ".join(sorted(map(str, data))) or "none"
        raise ConfigurationError(f"{what} has no field {field!r} (it has: {names})")
    value = data[field]
    if not isinstance(value, str):
        raise ConfigurationError(f"{what}: field {field!r} is not a string")
    return value
