"""Secret sources: literal, *_FILE, env:, file:, vault:// and aws-sm://, resolved only when fetching.

Vault is a stand-in for its KV v2 HTTP API (no Vault server can be installed here;
see secret_stores.py), driven by the real hvac client. AWS Secrets Manager is moto's
server mode on loopback, driven by the real boto3.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import traceback

import pytest

from conftest import run_cli
from qlam_hpc import ConfigurationError, Settings, TokenProvider
from qlam_hpc._secrets import AwsSecret, EnvSecret, FileSecret, SecretStoreUnreachable, VaultSecret, parse_reference
from qlam_hpc._settings import Secret
from secret_stores import aws, vault

VALUE = "s3cr3t-Value-From-A-Store"
BASE = {"QLAM_CLIENT_ID": "client-1", "AUTH_BASE_URL": "idp.example", "HOME": "/home/alice"}


def _settings(**variables: str) -> Settings:
    return Settings.from_env({**BASE, **variables})


# A uid no account on the test machine has: "another user".
OTHER_UID = 54321


def _secret_file(path, value: str = VALUE, mode: int = 0o600):
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def _shown(error: BaseException) -> str:
    """Everything an exception can show: message, repr, and its formatted traceback."""
    return str(error) + repr(error) + "".join(traceback.format_exception(error))


# --- the notation -------------------------------------------------------------------------


def test_a_plain_value_is_a_literal_secret():
    """QLAM_CLIENT_SECRET without a prefix is the secret itself, as before."""
    secret = _settings(QLAM_CLIENT_SECRET=VALUE).client_secret
    assert isinstance(secret, Secret) and secret.resolve().reveal() == VALUE


@pytest.mark.parametrize(
    ("reference", "kind", "described"),
    [
        ("env:MY_SECRET", EnvSecret, "environment variable MY_SECRET"),
        ("file:/run/secrets/qlam", FileSecret, "file /run/secrets/qlam"),
        ("vault://secret/qlam/hpc#client_secret", VaultSecret, "vault://secret/qlam/hpc#client_secret"),
        ("aws-sm://qlam/hpc#client_secret", AwsSecret, "aws-sm://qlam/hpc#client_secret"),
        (
            "aws-sm://arn:aws:secretsmanager:eu-west-1:123456789012:secret:qlam-AbCdEf#key",
            AwsSecret,
            "aws-sm://arn:aws:secretsmanager:eu-west-1:123456789012:secret:qlam-AbCdEf#key",
        ),
    ],
)
def test_references_name_their_source(reference, kind, described):
    """env:, file:, vault:// and aws-sm:// values become sources that describe where they point."""
    source = _settings(QLAM_CLIENT_SECRET=reference).client_secret
    assert type(source) is kind
    assert source.describe() == described
    assert described in repr(source)


@pytest.mark.parametrize("reference", ["env:", "env:NOT-A-NAME", "file:", "vault://secret", "vault://", "aws-sm://"])
def test_malformed_references_are_configuration_errors(reference):
    """A reference without its name, path or secret id is refused at once, naming the variable."""
    with pytest.raises(ConfigurationError, match="QLAM_CLIENT_SECRET") as caught:
        _settings(QLAM_CLIENT_SECRET=reference)
    assert caught.value.exit_code == 3


def test_a_mistyped_scheme_is_refused_before_any_request(env, sandbox):
    """vualt://... is a typo, not a secret: exit 3 naming the known schemes, and the IdP is never asked."""
    result = run_cli("token", env={**env, "QLAM_CLIENT_SECRET": "vualt://secret/qlam#x"})
    assert result.code == 3, result.err
    (line,) = result.err.splitlines()
    assert "QLAM_CLIENT_SECRET: vualt:// is not a secret source (did you mean vault://?)" in line
    assert "env:NAME, file:PATH, vault://MOUNT/PATH#FIELD or aws-sm://SECRET-ID#FIELD" in line
    assert "literal:VALUE" in line and "secret/qlam" not in line
    assert sandbox.stats()["token_requests"] == 0


@pytest.mark.parametrize("value", ["http://example.org/x", "s3://bucket/key", "AWS-SM://x#y", "vault+x://a/b"])
def test_any_unknown_scheme_is_a_configuration_error(value):
    """Every scheme://, whatever its letters, is a reference the user meant: refused, not sent."""
    with pytest.raises(ConfigurationError, match="is not a secret source") as caught:
        _settings(QLAM_CLIENT_SECRET=value)
    assert caught.value.exit_code == 3


@pytest.mark.parametrize("value", ["vault://secret/qlam#x", "env:NAME", "file:/x", "http://x", "literal:y", ""])
def test_literal_prefix_passes_any_value_as_the_secret(value):
    """literal:VALUE is VALUE itself, even when VALUE looks like a reference or a URL."""
    secret = _settings(QLAM_CLIENT_SECRET="literal:" + value + "tail").client_secret
    assert isinstance(secret, Secret) and secret.resolve().reveal() == value + "tail"


def test_a_colon_without_slashes_is_still_a_literal_secret():
    """Only scheme:// is taken for a reference: a secret with a colon in it is left alone."""
    secret = _settings(QLAM_CLIENT_SECRET="abc:def/ghi").client_secret
    assert isinstance(secret, Secret) and secret.resolve().reveal() == "abc:def/ghi"


def test_sources_do_not_pickle_and_compare_by_location():
    """A source never travels through a pickle (it may hold the environment); equal sources point alike."""
    source = parse_reference("env:A", origin="X", env={"A": VALUE})
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(source)
    assert source == parse_reference("env:A", origin="Y", env={}) != parse_reference("env:B", origin="X", env={})


def test_building_settings_reads_no_secret(tmp_path, vault):
    """Settings name sources without touching them: a missing file or a Vault secret are not read."""
    settings = _settings(QLAM_CLIENT_SECRET_FILE=str(tmp_path / "missing"))
    assert isinstance(settings.client_secret, FileSecret)
    _settings(QLAM_CLIENT_SECRET="vault://secret/qlam#client_secret", **vault.env())
    assert vault.reads == 0


# --- the environment ----------------------------------------------------------------------


def test_env_reference_reads_another_variable_when_resolved():
    """env:NAME reads NAME from the same environment, at resolve time."""
    env = {**BASE, "QLAM_CLIENT_SECRET": "env:MY_SECRET", "MY_SECRET": VALUE}
    assert Settings.from_env(env).client_secret.resolve().reveal() == VALUE


def test_env_reference_to_an_unset_variable_names_it():
    """env:NAME with NAME unset is a configuration error naming both variables, at resolve time."""
    source = _settings(QLAM_CLIENT_SECRET="env:MY_SECRET").client_secret
    with pytest.raises(ConfigurationError, match="QLAM_CLIENT_SECRET names env:MY_SECRET, but MY_SECRET is not set"):
        source.resolve()


# --- files ----------------------------------------------------------------------------------


def test_secret_file_is_read_without_its_trailing_newline(tmp_path):
    """QLAM_CLIENT_SECRET_FILE names a 0600 file; `echo secret > file` gives the secret without the newline."""
    path = _secret_file(tmp_path / "secret")
    assert _settings(QLAM_CLIENT_SECRET_FILE=str(path)).client_secret.resolve().reveal() == VALUE


def test_file_reference_in_the_secret_variable(tmp_path):
    """QLAM_CLIENT_SECRET=file:PATH is the same as QLAM_CLIENT_SECRET_FILE=PATH."""
    path = _secret_file(tmp_path / "secret")
    assert _settings(QLAM_CLIENT_SECRET=f"file:{path}").client_secret.resolve().reveal() == VALUE


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_secret_file_readable_by_others_is_refused(tmp_path, mode):
    """A secret file readable by group or others is refused with its mode and the fix, exit 3."""
    path = _secret_file(tmp_path / "secret", mode=mode)
    with pytest.raises(ConfigurationError) as caught:
        _settings(QLAM_CLIENT_SECRET_FILE=str(path)).client_secret.resolve()
    message = str(caught.value)
    assert f"QLAM_CLIENT_SECRET_FILE: {path} is readable by group or others (mode {mode:04o})" in message
    assert f"chmod 600 {path}" in message and caught.value.exit_code == 3
    assert VALUE not in _shown(caught.value)


@pytest.mark.parametrize("mode", [0o622, 0o620, 0o602, 0o660])
def test_a_secret_file_writable_by_others_is_refused(tmp_path, mode):
    """A secret file others may write could be swapped for their own secret or key: refused, exit 3."""
    path = _secret_file(tmp_path / "secret", mode=mode)
    with pytest.raises(ConfigurationError) as caught:
        _settings(QLAM_CLIENT_SECRET_FILE=str(path)).client_secret.resolve()
    message = str(caught.value)
    assert caught.value.exit_code == 3 and "\n" not in message and f"chmod 600 {path}" in message
    assert f"{path} is {'readable' if mode & 0o044 else 'writable'} by group or others (mode {mode:04o})" in message
    assert VALUE not in _shown(caught.value)


def test_a_secret_file_of_another_user_is_refused(tmp_path):
    """A 0600 file owned by another user (not root) is theirs to change: refused, naming the owner and chown."""
    path = _secret_file(tmp_path / "secret")
    os.chown(path, OTHER_UID, -1)
    with pytest.raises(ConfigurationError) as caught:
        _settings(QLAM_CLIENT_SECRET_FILE=str(path)).client_secret.resolve()
    message = str(caught.value)
    assert caught.value.exit_code == 3 and "\n" not in message
    assert (
        f"QLAM_CLIENT_SECRET_FILE: {path} belongs to uid {OTHER_UID}" in message
        and f"chown {os.geteuid()} {path}" in message
    )


def test_a_private_key_file_of_another_user_is_refused(tmp_path):
    """The same rules hold for QLAM_CLIENT_PRIVATE_KEY_FILE (and file: references)."""
    path = _secret_file(tmp_path / "key.pem", "-----BEGIN PRIVATE KEY-----")
    os.chown(path, OTHER_UID, -1)
    with pytest.raises(ConfigurationError, match=f"QLAM_CLIENT_PRIVATE_KEY_FILE: {path} belongs to uid {OTHER_UID}"):
        _settings(QLAM_CLIENT_PRIVATE_KEY_FILE=str(path)).private_key.resolve()
    path.chmod(0o622)
    os.chown(path, os.geteuid(), -1)
    with pytest.raises(ConfigurationError, match="is writable by group or others"):
        _settings(QLAM_CLIENT_SECRET=f"file:{path}").client_secret.resolve()


@pytest.mark.parametrize(
    ("mode", "owner", "refused"),
    [
        (0o777, None, "which other users can write to (mode 0777)"),
        (0o770, None, "which other users can write to (mode 0770)"),
        (0o755, OTHER_UID, f"which belongs to uid {OTHER_UID}"),
        (0o1777, None, None),  # sticky, like /tmp: others cannot rename or delete your file
        (0o700, None, None),
    ],
)
def test_a_secret_file_in_a_directory_others_can_write_is_refused(tmp_path, mode, owner, refused):
    """Whoever can write a directory on the way to the file can replace the file: refused, naming that directory."""
    directory = tmp_path / "shared"
    directory.mkdir()
    path = _secret_file(directory / "secret")
    directory.chmod(mode)
    if owner is not None:
        os.chown(directory, owner, -1)
    source = _settings(QLAM_CLIENT_SECRET_FILE=str(path)).client_secret
    if refused is None:
        assert source.resolve().reveal() == VALUE
        return
    with pytest.raises(ConfigurationError) as caught:
        source.resolve()
    message = str(caught.value)
    assert caught.value.exit_code == 3 and "\n" not in message
    assert f"QLAM_CLIENT_SECRET_FILE: {path} is in {directory}, {refused}" in message


def test_a_secret_file_reached_through_another_users_link_is_refused(tmp_path):
    """A symbolic link on the way, owned by another user in a sticky directory, can be re-pointed by them."""
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    _secret_file(mine / "secret")
    link = shared / "qlam"
    link.symlink_to(mine)
    os.lchown(link, OTHER_UID, -1)
    with pytest.raises(
        ConfigurationError, match=f"goes through the symbolic link {link}, which belongs to uid {OTHER_UID}"
    ):
        _settings(QLAM_CLIENT_SECRET_FILE=str(link / "secret")).client_secret.resolve()
    os.lchown(link, os.geteuid(), -1)  # your own link: followed
    assert _settings(QLAM_CLIENT_SECRET_FILE=str(link / "secret")).client_secret.resolve().reveal() == VALUE


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another user")
def test_a_user_trusts_directories_installed_by_root():
    """Run as an ordinary user: a file of one's own under directories owned by root (as admins
    install /run/secrets or /etc/qlam) is read; the same file in a root-owned 0777 directory is not."""
    import tempfile

    base = tempfile.mkdtemp(dir="/tmp")  # /tmp (root, sticky) -> base (root) -> mine (the user's)
    try:
        os.chmod(base, 0o755)
        mine = os.path.join(base, "mine")
        os.mkdir(mine, 0o700)
        os.chown(mine, OTHER_UID, OTHER_UID)
        path = os.path.join(mine, "secret")
        with open(path, "w") as file:
            file.write(VALUE + "\n")
        os.chmod(path, 0o600)
        os.chown(path, OTHER_UID, OTHER_UID)

        def as_user(target):
            # A forked child that becomes the user: the interpreter's own files need not be theirs to run.
            reader, writer = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                try:
                    os.setgroups([])
                    os.setgid(OTHER_UID)
                    os.setuid(OTHER_UID)
                    try:
                        answer = FileSecret(target, origin="QLAM_CLIENT_SECRET_FILE").resolve().reveal()
                    except ConfigurationError as error:
                        answer = f"ConfigurationError {error}"
                    os.write(writer, answer.encode())
                finally:
                    os._exit(0)
            os.close(writer)
            with os.fdopen(reader, "rb") as pipe:
                answer = pipe.read().decode()
            os.waitpid(pid, 0)
            return answer

        assert as_user(path) == VALUE
        os.chmod(base, 0o777)
        assert as_user(path).startswith(
            f"ConfigurationError QLAM_CLIENT_SECRET_FILE: {path} is in {base}, which other users"
        )
    finally:
        import shutil

        shutil.rmtree(base)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(mode=0o700), "is not a regular file"),
        (lambda p: (p.write_text(""), p.chmod(0o600)), "is empty"),
        (lambda p: (p.write_bytes(b"\xff\xfe"), p.chmod(0o600)), "is not UTF-8 text"),
    ],
)
def test_unusable_secret_files_are_named(tmp_path, setup, message):
    """A missing, empty, binary or non-regular secret file is a one-line configuration error naming it."""
    path = tmp_path / "secret"
    setup(path)
    with pytest.raises(ConfigurationError, match=message) as caught:
        _settings(QLAM_CLIENT_SECRET_FILE=str(path)).client_secret.resolve()
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_secret_and_secret_file_together_are_refused(tmp_path):
    """Setting both QLAM_CLIENT_SECRET and QLAM_CLIENT_SECRET_FILE is ambiguous: refused."""
    with pytest.raises(ConfigurationError, match="both QLAM_CLIENT_SECRET and QLAM_CLIENT_SECRET_FILE"):
        _settings(QLAM_CLIENT_SECRET="x", QLAM_CLIENT_SECRET_FILE=str(tmp_path / "s"))


def test_a_replaced_file_is_read_again(tmp_path):
    """Files are read at every resolve: a file replaced between two fetches gives the new secret."""
    path = _secret_file(tmp_path / "secret")
    source = _settings(QLAM_CLIENT_SECRET_FILE=str(path)).client_secret
    assert source.resolve().reveal() == VALUE
    _secret_file(tmp_path / "new", "rotated-value").replace(path)
    assert source.resolve().reveal() == "rotated-value"


# --- Vault (a real OpenBao server, real hvac) ------------------------------------------------------


def test_vault_secret_with_a_token(vault):
    """vault://MOUNT/PATH#FIELD reads the field with VAULT_ADDR and VAULT_TOKEN."""
    vault.put("secret", "qlam/hpc", {"client_secret": VALUE, "other": "x"})
    source = _settings(QLAM_CLIENT_SECRET="vault://secret/qlam/hpc#client_secret", **vault.env()).client_secret
    assert source.resolve(fresh=True).reveal() == VALUE
    assert vault.reads == 1


def test_vault_secret_with_approle(vault):
    """AppRole: VAULT_ROLE_ID and VAULT_SECRET_ID log in first, then the secret is read."""
    vault.put("kv", "team/qlam", {"client_secret": VALUE})
    role_id, secret_id = vault.add_approle()
    env = vault.env(VAULT_TOKEN="", VAULT_ROLE_ID=role_id, VAULT_SECRET_ID=secret_id)
    assert (
        _settings(QLAM_CLIENT_SECRET="vault://kv/team/qlam#client_secret", **env)
        .client_secret.resolve(fresh=True)
        .reveal()
        == VALUE
    )


def test_vault_namespace_is_sent(vault):
    """VAULT_NAMESPACE goes out as X-Vault-Namespace (Vault Enterprise, HCP, OpenBao namespaces)."""
    import hvac

    namespace = f"ns-{os.urandom(4).hex()}"
    vault.server.client().adapter.post(f"/v1/sys/namespaces/{namespace}", json={})
    inside = hvac.Client(url=vault.url, token=vault.token, namespace=namespace)
    inside.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    inside.secrets.kv.v2.create_or_update_secret(
        path="in-namespace", secret={"client_secret": VALUE}, mount_point="secret"
    )
    reference = "vault://secret/in-namespace#client_secret"
    found = _settings(QLAM_CLIENT_SECRET=reference, **vault.env(VAULT_NAMESPACE=namespace)).client_secret
    assert found.resolve(fresh=True).reveal() == VALUE
    with pytest.raises(ConfigurationError, match="Vault has no secret"):  # not in the root namespace
        _settings(QLAM_CLIENT_SECRET=reference, **vault.env()).client_secret.resolve(fresh=True)


def test_openbao_variables_name_the_server_and_login(vault):
    """BAO_ADDR and BAO_TOKEN, OpenBao's names, work where VAULT_* are not set."""
    vault.put("secret", "bao", {"client_secret": VALUE})
    env = {"BAO_ADDR": vault.url, "BAO_TOKEN": vault.token}
    assert (
        _settings(QLAM_CLIENT_SECRET="vault://secret/bao#client_secret", **env)
        .client_secret.resolve(fresh=True)
        .reveal()
        == VALUE
    )


def test_a_failing_proxy_in_front_of_vault_is_exit_15():
    """A proxy's 502 page where Vault should answer: unavailable, exit 15. (A stand-in: a real
    Vault never answers with a proxy's HTML page.)"""
    from secret_stores import FailingProxy

    proxy = FailingProxy(502)
    try:
        reference = "vault://secret/qlam#client_secret"
        with pytest.raises(SecretStoreUnreachable, match="unavailable") as caught:
            _settings(QLAM_CLIENT_SECRET=reference, VAULT_ADDR=proxy.url, VAULT_TOKEN="t").client_secret.resolve(
                fresh=True
            )
        assert caught.value.exit_code == 15
    finally:
        proxy.stop()


def test_vault_single_field_needs_no_name(vault):
    """Without #FIELD a secret with one field gives that field; with several, the error lists their names."""
    vault.put("secret", "one", {"value": VALUE})
    vault.put("secret", "two", {"a": VALUE, "b": VALUE})
    assert (
        _settings(QLAM_CLIENT_SECRET="vault://secret/one", **vault.env()).client_secret.resolve(fresh=True).reveal()
        == VALUE
    )
    with pytest.raises(ConfigurationError, match=r"holds several fields \(a, b\): name one with #FIELD") as caught:
        _settings(QLAM_CLIENT_SECRET="vault://secret/two", **vault.env()).client_secret.resolve(fresh=True)
    assert VALUE not in _shown(caught.value)


@pytest.mark.parametrize(
    ("reference", "env_changes", "message"),
    [
        ("vault://secret/qlam#client_secret", {"VAULT_TOKEN": "s.wrong"}, "permission denied"),
        ("vault://secret/missing#client_secret", {}, "Vault has no secret vault://secret/missing#client_secret"),
        ("vault://secret/qlam#nope", {}, "has no field 'nope' (it has: client_secret)"),
        ("vault://secret/qlam#client_secret", {"VAULT_ADDR": ""}, "VAULT_ADDR is not set"),
        ("vault://secret/qlam#client_secret", {"VAULT_TOKEN": "", "HOME": "/nonexistent"}, "no Vault login"),
        ("vault://secret/qlam#client_secret", {"VAULT_ADDR": "http://vault.example.com"}, "https is required"),
    ],
)
def test_vault_problems_are_configuration_errors(vault, reference, env_changes, message):
    """Refusals, missing secrets or fields and missing settings are exit 3, named, without the secret."""
    vault.put("secret", "qlam", {"client_secret": VALUE})
    env = {k: v for k, v in vault.env(**env_changes).items() if v}
    with pytest.raises(ConfigurationError, match=re.escape(message)) as caught:
        Settings.from_env({**BASE, "QLAM_CLIENT_SECRET": reference, **env}).client_secret.resolve(fresh=True)
    assert caught.value.exit_code == 3 and VALUE not in _shown(caught.value)


def test_vault_unreachable_or_sealed_has_its_own_exit_code(vault):
    """A Vault that does not answer, or answers 503 (sealed), is SecretStoreUnreachable, exit 15."""
    vault.put("secret", "qlam", {"client_secret": VALUE})
    reference = "vault://secret/qlam#client_secret"
    with pytest.raises(SecretStoreUnreachable, match="is unreachable") as caught:
        _settings(QLAM_CLIENT_SECRET=reference, **vault.env(VAULT_ADDR="http://127.0.0.1:9")).client_secret.resolve(
            fresh=True
        )
    assert caught.value.exit_code == 15
    vault.sealed = True
    with pytest.raises(SecretStoreUnreachable, match="unavailable"):
        _settings(QLAM_CLIENT_SECRET=reference, **vault.env()).client_secret.resolve(fresh=True)


def test_vault_value_is_read_once_per_process(vault):
    """A Vault secret is read once and kept for the process; fresh=True asks again."""
    vault.put("secret", "once", {"client_secret": VALUE})
    source = _settings(QLAM_CLIENT_SECRET="vault://secret/once#client_secret", **vault.env()).client_secret
    source.resolve()
    source.resolve()
    assert vault.reads == 1
    source.resolve(fresh=True)
    assert vault.reads == 2


# --- AWS Secrets Manager (moto server mode, real boto3) -------------------------------------


def test_aws_secret_whole_string(aws):
    """aws-sm://NAME without #FIELD is the whole SecretString."""
    name = aws.create(VALUE)
    source = _settings(QLAM_CLIENT_SECRET=f"aws-sm://{name}", **aws.env()).client_secret
    assert source.resolve(fresh=True).reveal() == VALUE


def test_aws_secret_json_field(aws):
    """aws-sm://NAME#FIELD takes FIELD of a JSON SecretString."""
    name = aws.create({"client_id": "client-1", "client_secret": VALUE})
    source = _settings(QLAM_CLIENT_SECRET=f"aws-sm://{name}#client_secret", **aws.env()).client_secret
    assert source.resolve(fresh=True).reveal() == VALUE


def test_aws_secret_by_arn(aws):
    """An ARN names the secret (and its region)."""
    name = aws.create(VALUE)
    arn = aws.client.describe_secret(SecretId=name)["ARN"]
    env = aws.env(AWS_REGION="")
    source = Settings.from_env({**BASE, "QLAM_CLIENT_SECRET": f"aws-sm://{arn}", **env}).client_secret
    assert source.resolve(fresh=True).reveal() == VALUE


@pytest.mark.parametrize(
    ("make", "suffix", "message"),
    [
        (
            lambda aws: "qlam/no-such-secret",
            "",
            "refused to give aws-sm://qlam/no-such-secret (ResourceNotFoundException)",
        ),
        (lambda aws: aws.create({"a": VALUE}), "#client_secret", "has no field 'client_secret' (it has: a)"),
        (lambda aws: aws.create(VALUE), "#client_secret", "needs a JSON object in the SecretString"),
    ],
)
def test_aws_problems_are_configuration_errors(aws, make, suffix, message):
    """A missing secret or field is exit 3, named, without the secret."""
    reference = f"aws-sm://{make(aws)}{suffix}"
    with pytest.raises(ConfigurationError, match=re.escape(message)) as caught:
        _settings(QLAM_CLIENT_SECRET=reference, **aws.env()).client_secret.resolve(fresh=True)
    assert VALUE not in _shown(caught.value)


def test_aws_unreachable_has_its_own_exit_code(aws):
    """An AWS endpoint that does not answer is SecretStoreUnreachable, exit 15."""
    env = aws.env(AWS_ENDPOINT_URL="http://127.0.0.1:9")
    with pytest.raises(SecretStoreUnreachable, match="AWS Secrets Manager is unreachable") as caught:
        _settings(QLAM_CLIENT_SECRET="aws-sm://qlam/x", **env).client_secret.resolve(fresh=True)
    assert caught.value.exit_code == 15


def test_aws_debug_logging_never_shows_the_secret(aws, caplog):
    """Even with every logger at DEBUG, botocore's response-body lines never carry the secret."""
    name = aws.create({"client_secret": VALUE})
    caplog.set_level(logging.DEBUG)
    logging.getLogger("botocore").setLevel(logging.DEBUG)
    source = _settings(QLAM_CLIENT_SECRET=f"aws-sm://{name}#client_secret", **aws.env()).client_secret
    assert source.resolve(fresh=True).reveal() == VALUE
    assert caplog.records  # botocore did log
    assert VALUE not in caplog.text


# --- end to end: the sandbox, through the CLI --------------------------------------------------


def _cli_env(env: dict, secret_variable: str, reference: str, **extra: str) -> dict:
    base = {k: v for k, v in env.items() if k != "QLAM_CLIENT_SECRET"}
    return {**base, secret_variable: reference, **extra}


@pytest.mark.leak_check_expect("secret")  # the 0600 secret file the test reads
def test_every_source_gets_a_token_from_the_sandbox(env, sandbox, tmp_path, vault, aws):
    """The secret from a file, env:, Vault and AWS each gets a real token; nothing shows the secret."""
    secret = env["QLAM_CLIENT_SECRET"]
    path = _secret_file(tmp_path / "secret", secret)
    vault.put("secret", "qlam", {"client_secret": secret})
    name = aws.create({"client_secret": secret})
    cases = {
        "file": _cli_env(env, "QLAM_CLIENT_SECRET_FILE", str(path)),
        "env": _cli_env(env, "QLAM_CLIENT_SECRET", "env:MY_QLAM_SECRET", MY_QLAM_SECRET=secret),
        "vault": _cli_env(env, "QLAM_CLIENT_SECRET", "vault://secret/qlam#client_secret", **vault.env()),
        "aws": _cli_env(env, "QLAM_CLIENT_SECRET", f"aws-sm://{name}#client_secret", **aws.env()),
    }
    for label, case in cases.items():
        result = run_cli("-vv", "token", env={**case, "QLAM_TOKEN_CACHE_DIR": str(tmp_path / label)})
        assert result.code == 0, (label, result.err)
        assert secret not in result.out + result.err
    assert sandbox.stats()["tokens_issued"] == 4


def test_a_warm_token_reads_no_secret_source(env, sandbox, tmp_path):
    """On a cache hit the secret file is never opened: a missing file does not matter."""
    assert run_cli("token", env=env).code == 0
    broken = _cli_env(env, "QLAM_CLIENT_SECRET_FILE", str(tmp_path / "gone"))
    result = run_cli("token", env=broken)
    assert result.code == 0, result.err
    assert sandbox.stats()["token_requests"] == 1


@pytest.mark.leak_check_expect("secret", kinds=["client secret"])  # the 0644 secret file the CLI refuses
def test_an_unsafe_secret_file_stops_the_cli_with_exit_3(env, sandbox, tmp_path):
    """qlam-hpc token with a 0644 secret file: one error line, exit 3, no request, no secret shown."""
    secret = env["QLAM_CLIENT_SECRET"]
    path = _secret_file(tmp_path / "secret", secret, mode=0o644)
    result = run_cli("token", env=_cli_env(env, "QLAM_CLIENT_SECRET_FILE", str(path)))
    assert result.code == 3
    assert result.err.count("\n") == 1 and "is readable by group or others (mode 0644)" in result.err
    assert secret not in result.err + result.out
    assert sandbox.stats()["token_requests"] == 0


def test_an_unreachable_vault_exits_15(env, sandbox, vault):
    """qlam-hpc token with Vault down: exit 15, one line naming Vault."""
    case = _cli_env(
        env, "QLAM_CLIENT_SECRET", "vault://secret/qlam#client_secret", **vault.env(VAULT_ADDR="http://127.0.0.1:9")
    )
    result = run_cli("token", env=case)
    assert result.code == 15 and "Vault at http://127.0.0.1:9 is unreachable" in result.err


def test_provider_resolves_only_when_fetching(settings, sandbox, vault):
    """A provider whose token is cached never calls Vault; the first fetch does, once."""
    vault.put("secret", "p", {"client_secret": settings.client_secret.reveal()})
    env = {"QLAM_CLIENT_SECRET": "vault://secret/p#client_secret", **vault.env()}
    source = Settings.from_env({**BASE, **env}).client_secret
    provider = TokenProvider(settings.with_(client_secret=source))
    provider.get_token()
    assert vault.reads == 1
    TokenProvider(settings.with_(client_secret=source)).get_token()  # from the shared cache
    assert vault.reads == 1
    assert os.environ.get("VAULT_ADDR") is None  # the sources read the mapping given, not os.environ
