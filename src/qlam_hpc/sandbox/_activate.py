"""``/activate``: the page where a person approves or denies a device login in a browser.

The device code flow's other half (RFC 8628 section 3.3): the CLI on a login node
shows a URL and a user code, and someone opens the URL anywhere.  Real identity
providers ask for a password here; the sandbox only asks which of its configured
users approves, so a demo or a manual test works without any account.  Tests
approve through ``POST /_sandbox/device/approve`` or ``Sandbox.approve`` instead.

Everything a page shows that came from a request is HTML-escaped, and the pages
allow no scripts, no framing and no foreign form targets.
"""

from __future__ import annotations

import time
from html import escape

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import HTMLResponse

from ._config import SandboxConfig
from ._context import context_of
from ._params import Refusal, read_params

__all__ = ["router"]

router = APIRouter()

_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # the user code is in the URL
}

_STYLE = """
body { font-family: system-ui, sans-serif; background: #f4f5f7; color: #1d2330; margin: 0; }
main { max-width: 28rem; margin: 4rem auto; background: #fff; padding: 2rem; border-radius: 8px;
       box-shadow: 0 1px 4px rgba(0, 0, 0, .12); }
h1 { font-size: 1.4rem; margin-top: 0; }
label { display: block; margin: 1rem 0 .3rem; font-weight: 600; }
input, select { width: 100%; box-sizing: border-box; padding: .5rem; font-size: 1rem; }
input[name=user_code] { font-family: ui-monospace, monospace; letter-spacing: .15em; text-transform: uppercase; }
.buttons { display: flex; gap: .75rem; margin-top: 1.5rem; }
button { flex: 1; padding: .6rem; font-size: 1rem; border: 0; border-radius: 4px; cursor: pointer; }
button[value=approve] { background: #2456d3; color: #fff; }
button[value=deny] { background: #e4e6eb; color: #1d2330; }
.note { color: #5c6370; font-size: .85rem; margin-top: 2rem; }
"""


@router.get("/activate")
async def activate_form(request: Request) -> HTMLResponse:
    """The form, with the user code prefilled from ``?user_code=`` (``verification_uri_complete``)."""
    config = context_of(request).config
    return _page("Activate your device", _form(config, request.query_params.get("user_code", "")))


@router.post("/activate")
async def activate(request: Request) -> HTMLResponse:
    """Approve or deny: form fields ``user_code``, ``user`` (subject or e-mail), ``action``."""
    ctx = context_of(request)
    try:
        form = await read_params(request)
    except Refusal:
        return _page("Something went wrong", "<p>The form could not be read; please try again.</p>", 400)
    user_code, action = form.get("user_code", ""), form.get("action")
    if action not in ("approve", "deny"):
        return _page("Something went wrong", "<p>Choose Approve or Deny.</p>" + _form(ctx.config, user_code), 400)
    try:
        ctx.state.logins.decide(user_code, form.get("user") or None, deny=action == "deny", now=time.time())
    except ValueError:
        return _page("Unknown user", "<p>Choose one of the listed users.</p>" + _form(ctx.config, user_code), 400)
    except LookupError:
        content = (
            f"<p>The code <strong>{escape(user_code)}</strong> is unknown or has expired, "
            "or that login was already approved or denied.</p>" + _form(ctx.config, "")
        )
        return _page("Unknown or expired code", content, 400)
    if action == "deny":
        return _page("Device login denied", "<p>The device will not be signed in. You can close this page.</p>")
    return _page("Device approved — you can close this page", "<p>Return to your device: it is signed in.</p>")


def _form(config: SandboxConfig, user_code: str) -> str:
    options = "".join(
        f'<option value="{escape(u.subject)}">{escape(u.name)} &lt;{escape(u.email)}&gt;</option>' for u in config.users
    )
    return (
        '<form method="post" action="/activate">'
        '<label for="user_code">Code shown on your device</label>'
        f'<input id="user_code" name="user_code" value="{escape(user_code)}" placeholder="BCDF-GHJK" '
        'autocomplete="off" required>'
        f'<label for="user">Sign in as</label><select id="user" name="user">{options}</select>'
        '<div class="buttons"><button type="submit" name="action" value="approve">Approve</button>'
        '<button type="submit" name="action" value="deny">Deny</button></div>'
        "</form>"
    )


def _page(title: str, content: str, status: int = 200) -> HTMLResponse:
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} · qlam-hpc sandbox</title><style>{_STYLE}</style></head>"
        f"<body><main><h1>{escape(title)}</h1>{content}"
        '<p class="note">qlam-hpc sandbox: a local stand-in for the identity provider. '
        "Never enter real credentials here.</p></main></body></html>"
    )
    return HTMLResponse(html, status_code=status, headers=_HEADERS)
