"""The QLAM tasks API client: typed models, request building, sync and async clients.

Private: the public names are re-exported by ``qlam_hpc`` (``QlamClient``,
``AsyncQlamClient``, ``Task``, ...). Layers, innermost first:

- ``_settings``: ``ApiSettings``, the environment read in one place;
- ``_models``: pydantic models of what the API sends and takes;
- ``_attribution``: who submitted a task, for ``system_metadata``;
- ``_requests``: pure request building, response reading, retry and wait timing;
- ``_transport``: TLS, proxies, timeouts and headers for the httpx clients;
- ``_files``: downloads written atomically (temporary file, then rename);
- ``_client`` / ``_async_client``: thin I/O loops around the pure core;
- ``_requests_auth``: the token hook for ``requests`` users.
"""
