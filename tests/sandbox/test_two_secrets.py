"""A client holds two secrets during a rotation, as on Auth0: the replaced secret stays valid
(``keep_previous``) until it is revoked (``revoke_previous``)."""

from __future__ import annotations

import httpx

from qlam_hpc.sandbox import Sandbox, SandboxClient, SandboxConfig

OLD, NEW = "old-secret-0123456789abcdef", "new-secret-0123456789abcdef"


def token_status(sandbox: Sandbox, secret: str) -> int:
    form = {"grant_type": "client_credentials", "client_id": "rotating", "client_secret": secret}
    return httpx.post(sandbox.token_url, data={**form, "audience": sandbox.audience}).status_code


def rotate(sandbox: Sandbox, **body: object) -> httpx.Response:
    return httpx.post(
        sandbox.url + "/_sandbox/clients", json={"client_id": "rotating", **body}, headers=sandbox.control_headers()
    )


def test_the_previous_secret_works_until_it_is_revoked() -> None:
    with Sandbox(SandboxConfig(clients=(SandboxClient("rotating", OLD),))) as sandbox:
        answer = rotate(sandbox, client_secret=NEW, keep_previous=True)
        assert answer.json()["updated"] == ["client_secret", "previous_secret_kept"]
        assert OLD not in answer.text and NEW not in answer.text
        assert (token_status(sandbox, OLD), token_status(sandbox, NEW)) == (200, 200)
        assert rotate(sandbox, revoke_previous=True).json()["updated"] == ["previous_secret_revoked"]
        assert (token_status(sandbox, OLD), token_status(sandbox, NEW)) == (401, 200)


def test_without_keep_previous_the_old_secret_stops_at_once() -> None:
    with Sandbox(SandboxConfig(clients=(SandboxClient("rotating", OLD),))) as sandbox:
        rotate(sandbox, client_secret=NEW)
        assert (token_status(sandbox, OLD), token_status(sandbox, NEW)) == (401, 200)
        assert rotate(sandbox, keep_previous="yes").status_code == 400
