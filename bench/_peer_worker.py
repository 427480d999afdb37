"""One process of ``bench/peers.py``: import a client library, wait at the start barrier, then
get a token and make one API call (or keep doing so for a while), and report its times.

    python _peer_worker.py PEER GO_FILE DELAY DURATION

Everything the library needs is imported before the barrier, so the clock measures the
token and the call, not the interpreter (200 interpreters importing at once on two cores
would otherwise spread the requests out and hide the race). ``DELAY`` staggers the start
after the barrier; ``DURATION`` > 0 repeats get-token-and-call once a second that long.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

PEER, GO, DELAY, DURATION = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
API = os.environ["QLAM_API_URL"] + "/v2/squin-256q/tasks"
TOKEN_URL = os.environ["AUTH_BASE_URL"] + "/oauth/token"
CLIENT_ID, SECRET, AUDIENCE = (
    os.environ["QLAM_CLIENT_ID"],
    os.environ["QLAM_CLIENT_SECRET"],
    os.environ["QLAM_AUDIENCE"],
)


def qlam_hpc_library():
    from qlam_hpc import QlamClient

    client = QlamClient()
    return lambda: client.list_tasks()


def qlam_hpc_cli():
    command = [str(Path(sys.executable).with_name("qlam-hpc")), "api", "GET", "/v2/squin-256q/tasks"]
    return lambda: subprocess.run(command, stdout=subprocess.DEVNULL, check=True)


def qlam_core():
    # The sandbox's discovery document lacks four fields Auth0 sends (authorization and
    # end-session endpoints, response types, PKCE methods) that qlam-core 0.10 requires;
    # they are filled in here, and change nothing about which requests it makes.
    from qlam_core.auth.oauth import models
    from qlam_core.common.context import AppContext
    from qlam_core.plugins.tasks import TasksClient
    from qlam_core.sdk import refresh_credentials

    original = models.OIDCConfiguration.from_dict.__func__
    filler = {
        "authorization_endpoint": os.environ["AUTH_BASE_URL"] + "/authorize",
        "end_session_endpoint": os.environ["AUTH_BASE_URL"] + "/v2/logout",
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
    }
    models.OIDCConfiguration.from_dict = classmethod(lambda cls, data: original(cls, {**filler, **data}))
    ctx = AppContext()

    def call():
        refresh_credentials(ctx, "m2m")
        with TasksClient(ctx) as client:
            client.list()

    return call


def httpx_auth():
    import httpx
    from httpx_auth import JsonTokenFileCache, OAuth2, OAuth2ClientCredentials

    OAuth2.token_cache = JsonTokenFileCache(os.environ["PEER_CACHE_DIR"] + "/httpx-auth-tokens.json")
    auth = OAuth2ClientCredentials(TOKEN_URL, client_id=CLIENT_ID, client_secret=SECRET, audience=AUDIENCE)
    client = httpx.Client(auth=auth)
    return lambda: client.get(API).raise_for_status()


def requests_oauth2client():
    import requests
    from requests_oauth2client import OAuth2Client, OAuth2ClientCredentialsAuth

    oauth = OAuth2Client(token_endpoint=TOKEN_URL, auth=(CLIENT_ID, SECRET))
    session = requests.Session()
    session.auth = OAuth2ClientCredentialsAuth(oauth, audience=AUDIENCE)
    return lambda: session.get(API).raise_for_status()


def qlam_page_recipe():
    """The Python approach of QuEra's "HPC without User Context" page, as written there."""
    import requests

    cache = {"token": None, "expires_at": 0}

    def get_m2m_token():
        if cache["token"] and time.time() < cache["expires_at"]:
            return cache["token"]
        response = requests.post(
            TOKEN_URL,
            data={
                "grant_type": "client_credentials",
                "client_id": CLIENT_ID,
                "client_secret": SECRET,
                "audience": AUDIENCE,
            },
        )
        data = response.json()
        cache["token"] = data["access_token"]
        expires_in = max(int(data["expires_in"]), 0)
        cache["expires_at"] = time.time() + expires_in - min(60, expires_in)
        return cache["token"]

    return lambda: requests.get(API, headers={"Authorization": f"Bearer {get_m2m_token()}"}).raise_for_status()


PEERS = {
    "qlam-hpc library": qlam_hpc_library,
    "qlam-hpc CLI": qlam_hpc_cli,
    "qlam-core": qlam_core,
    "httpx-auth": httpx_auth,
    "requests-oauth2client": requests_oauth2client,
    "QLAM page recipe": qlam_page_recipe,
}


def main() -> None:
    call = PEERS[PEER]()
    print("ready", flush=True)
    while not GO.exists():
        time.sleep(0.001)
    time.sleep(DELAY)
    started = time.time()
    errors = 0
    while True:
        try:
            call()
        except Exception:  # counted, not fatal: the table shows failures
            errors += 1
        if time.time() - started >= DURATION:
            break
        time.sleep(1.0)
    print(json.dumps({"started": started, "finished": time.time(), "errors": errors}), flush=True)


if __name__ == "__main__":
    main()
