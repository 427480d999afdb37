"""``/activate``: the page where the sandbox's owner approves or denies a device login in a browser.

The device code flow's other half (RFC 8628 section 3.3): the CLI on a login node
shows a URL and a user code, and someone opens the URL anywhere.  Real identity
providers ask for a password here; the sandbox asks which of its configured users
approves, so a demo or a manual test works without any account.  Tests approve
through ``POST /_sandbox/device/approve`` or ``Sandbox.approve`` instead.

Who may decide: the sandbox's owner only.  It listens on loopback, which on a shared
login node every local user reaches, and anyone who could approve here could log in
as any of its users.  So, as Jupyter does, the owner opens a link carrying the control
token once (``GET /activate?token=...``, ``QLAM_SANDBOX_APPROVE_URL``); it sets an
HttpOnly, SameSite=Strict cookie derived from the token and redirects to the page.
``POST /activate`` then needs that cookie, or the control token as a Bearer header
(scripts); anything else gets a 403 page saying where the link is.  A form sent from
another page (another port of 127.0.0.1 is "same site" to a browser, so SameSite
alone does not stop it) is refused by its ``Origin``.  The form itself stays
viewable: it shows the code, and decides nothing.

Everything a page shows that came from a request is HTML-escaped, and the pages
allow no scripts, no framing and no foreign form targets.
"""

from __future__ import annotations

import secrets
import time
from html import escape
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ._config import SandboxConfig
from ._context import SandboxContext, context_of, is_owner
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
async def activate_form(request: Request) -> Response:
    """The form, with the user code prefilled from ``?user_code=`` (``verification_uri_complete``);
    with ``?token=<control token>``, the owner's consent: the cookie, and a redirect to the form."""
    ctx = context_of(request)
    user_code = request.query_params.get("user_code", "")
    token = request.query_params.get("token")
    if token is not None:
        if not secrets.compare_digest(token.encode(), ctx.control_token.encode()):
            return _page("Not this sandbox's link", _HOW_TO_APPROVE, 403)
        # The redirect drops the token from the address bar (and so from what is shown or bookmarked).
        target = "/activate" + (f"?{urlencode({'user_code': user_code})}" if user_code else "")
        response = RedirectResponse(target, status_code=303, headers=_HEADERS)
        response.set_cookie(
            _cookie_name(ctx, request),
            ctx.approver_cookie,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response
    notice = "" if _may_decide(ctx, request) is None else _NOT_YET
    return _page("Activate your device", notice + _form(ctx.config, user_code))


@router.post("/activate")
async def activate(request: Request) -> HTMLResponse:
    """Approve or deny, for the owner only: form fields ``user_code``, ``user`` (subject or e-mail), ``action``."""
    ctx = context_of(request)
    refused = _may_decide(ctx, request)
    if refused is not None:
        return _page("Only the sandbox's owner can approve", refused, 403)
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


_HOW_TO_APPROVE = (
    "<p>Only the person who started this sandbox can approve or deny its device logins here. "
    "If that is you: open the link in <code>QLAM_SANDBOX_APPROVE_URL</code> once in this browser "
    "(it is in the sandbox's env file, or among the export lines it printed; in Python, "
    "<code>Sandbox.approve_url</code>), then approve again. Scripts can send "
    "<code>Authorization: Bearer $QLAM_SANDBOX_CONTROL_TOKEN</code> instead.</p>"
)
_NOT_YET = (
    "<p><strong>This browser cannot approve yet.</strong> Only the person who started this sandbox can: "
    "open the link in <code>QLAM_SANDBOX_APPROVE_URL</code> (in the sandbox's env file, or among the "
    "export lines it printed) once in this browser, then come back.</p>"
)
_OTHER_PAGE = (
    "<p>This form was sent from another page, not from this sandbox's own. "
    "Open <code>/activate</code> on the sandbox itself, and approve there.</p>"
)


def _cookie_name(ctx: SandboxContext, request: Request) -> str:
    # Browsers keep one cookie jar for all ports of a host: the port keeps two sandboxes apart.
    return f"qlam_sandbox_approver_{urlsplit(ctx.base(request)).port or 0}"


def _may_decide(ctx: SandboxContext, request: Request) -> str | None:
    """``None`` if the request speaks for the owner; else why not, as the page's HTML."""
    if "authorization" in request.headers:
        return None if is_owner(request) else _HOW_TO_APPROVE
    cookie = request.cookies.get(_cookie_name(ctx, request))
    if cookie is None or not secrets.compare_digest(cookie.encode(), ctx.approver_cookie.encode()):
        return _HOW_TO_APPROVE
    # A form another local server's page makes the browser send carries the cookie too
    # (all ports of 127.0.0.1 are one site); its Origin names that page.
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        return _OTHER_PAGE
    return None


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
