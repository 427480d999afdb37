"""One task of the demo's job array: a token through the shared cache, one authenticated call.

Prints one JSON line: ``{"ok": ..., "source": ..., "subject": ...}``, never the token.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    import httpx

    from ._auth import QlamAuth
    from ._errors import QlamError
    from ._provider import TokenProvider

    try:
        provider = TokenProvider.from_env()
        source = provider.get().source
        with httpx.Client(base_url=os.environ["QLAM_API_URL"], auth=QlamAuth(provider), timeout=30) as client:
            response = client.get("/userinfo")
        ok = response.status_code == 200
        result = {"ok": ok, "source": source, "status": response.status_code}
        if ok:
            result["subject"] = response.json().get("sub")
    except QlamError as error:
        result = {"ok": False, "error": str(error), "exit_code": error.exit_code}
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
