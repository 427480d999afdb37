"""The CI systems of docs/federation.md, emulated for the doc-test harness (tests/test_docs.py).

A block marked ``<!-- doc-test: setup github -->`` (``gitlab``, ``kubernetes``,
``site-command``) runs against a sandbox that trusts a loopback issuer for token
exchange, with what that CI system would give the job:

- ``github``: ``ACTIONS_ID_TOKEN_REQUEST_URL`` and ``ACTIONS_ID_TOKEN_REQUEST_TOKEN``, served
  by a loopback stand-in for the runner's endpoint (bearer request token, ``audience=``);
- ``gitlab``: ``GITLAB_CI=true`` and ``QLAM_ID_TOKEN``, as ``id_tokens:`` sets them;
- ``kubernetes``: a projected service-account token file, named by ``QLAM_SUBJECT_TOKEN_FILE``
  as the pod spec's ``env:`` does;
- ``site-command``: a ``site-token`` program on ``PATH`` that prints a token.

Each also has the pod's or workflow's settings: the sandbox's client, ``QLAM_AUTH_FLOW=token-exchange``
and a ``QLAM_SUBJECT_TOKEN_TYPE`` the sandbox accepts. One issuer and one sandbox serve the
whole run; they are started on first use.
"""

from __future__ import annotations

import sys
from pathlib import Path

from oidc_issuers import CraftedIssuer, GitHubRunner
from qlam_hpc.sandbox import Sandbox, SandboxConfig

SETUPS = ("github", "gitlab", "kubernetes", "site-command")
_REQUEST_TOKEN = "doc-test-runner-request-token"
_SUBJECTS = {
    "github": "repo:octo-org/octo-repo:ref:refs/heads/main",
    "gitlab": "project_path:lab/qlam-jobs:ref_type:branch:ref:main",
    "kubernetes": "system:serviceaccount:lab:qlam-runner",
    "site-command": "alice",
}


class _Federation:
    def __init__(self) -> None:
        self.issuer = CraftedIssuer()
        config = SandboxConfig.default(task_duration=0.3, exchange_issuers=(self.issuer.url,))
        self.sandbox = Sandbox(config).start()
        self.runner = GitHubRunner(_REQUEST_TOKEN, lambda audience: self.token("github", audience)).url

    def token(self, kind: str, audience: str | None = None) -> str:
        return self.issuer.mint(self.issuer.claims(_SUBJECTS[kind], audience or self.sandbox.url))


_STATE: list[_Federation] = []


def _federation() -> _Federation:
    if not _STATE:
        _STATE.append(_Federation())
    return _STATE[0]


def environment(setup: str, directory: Path, base: dict[str, str]) -> dict[str, str]:
    """The environment a block of ``setup`` runs with: ``base`` (a reader's fresh shell) and what
    the CI system gives the job; files it needs are made in ``directory``."""
    federation = _federation()
    federation.sandbox.reset()
    env = {
        **base,
        **federation.sandbox.env(flow="token-exchange"),
        "QLAM_SANDBOX_CONTROL_TOKEN": federation.sandbox.control_token,
    }
    if setup == "github":
        env |= {
            "GITHUB_ACTIONS": "true",
            "ACTIONS_ID_TOKEN_REQUEST_URL": federation.runner,
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": _REQUEST_TOKEN,
        }
    elif setup == "gitlab":
        env |= {"GITLAB_CI": "true", "QLAM_ID_TOKEN": federation.token("gitlab")}
    elif setup == "kubernetes":
        token_file = directory / ".doc-test-sa-token"
        token_file.write_text(federation.token("kubernetes") + "\n")
        env |= {"QLAM_SUBJECT_TOKEN_FILE": str(token_file)}
    elif setup == "site-command":
        bin_dir = directory / ".doc-test-bin"
        bin_dir.mkdir(exist_ok=True)
        token_file = directory / ".doc-test-site-token"
        token_file.write_text(federation.token("site-command") + "\n")
        program = bin_dir / "site-token"
        program.write_text(f"#!{sys.executable}\nimport sys\nprint(open({str(token_file)!r}).read().strip())\n")
        program.chmod(0o755)
        env["PATH"] = f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"
    else:
        raise ValueError(f"unknown federation setup {setup!r}")
    return env


def exchanges() -> int:
    """Exchanges the federation sandbox made since the last block's reset."""
    stats: dict[str, int] = _federation().sandbox.stats()
    return stats["token_exchanges"]
