"""One JSON POST with retries, shared by everything that talks to an OpenAI-compatible server
(the HTTP teacher and the HTTP judge): timeouts, connection errors, 429 and 5xx are retried with
exponential backoff; any other 4xx means the request itself is wrong and is raised at once."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request


class ClientError(Exception):
    """A 4xx answer other than 429: the request itself is wrong, so retrying cannot help."""


def post_json(
    url: str, body: dict, api_key: str = "", timeout: float = 60.0, retries: int = 4, backoff: float = 1.0
) -> tuple[dict | None, str | None]:
    """(response, None) on success; (None, the last error) once the retries are spent."""
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    error = None
    for attempt in range(retries + 1):
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read()), None
        except urllib.error.HTTPError as err:
            error = f"HTTP {err.code}"
            if err.code != 429 and err.code < 500:
                raise ClientError(error) from err
        except (urllib.error.URLError, TimeoutError, OSError, json.JSONDecodeError) as err:
            error = f"{type(err).__name__}: {err}"
        if attempt < retries:
            time.sleep(backoff * 2**attempt)
    return None, error
