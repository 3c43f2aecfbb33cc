"""Clients for `sluice serve`: `/translation`, `/v1/models` and the Open Inference Protocol
(`/v2`), synchronous (`Client`) and asyncio (`AsyncClient`), with the same retry rule: 503, 429,
502 and 504 answers and lost connections are retried, waiting what `Retry-After` says (else
backing off from 0.1 s, doubling, at most `max_wait`), up to `retries` more attempts. A server
started with `--api-key` takes the key as `api_key=`.
"""

import asyncio
import time

import httpx

RETRIED_STATUSES = (429, 502, 503, 504)


class SluiceError(Exception):
    """An answer that is not a success: its status, the server's error code and message."""

    def __init__(self, status, code, message, retry_after=None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


def _retry_after(response):
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _error(response):
    try:
        body = response.json()
    except ValueError:
        body = {}
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):  # /translation and /v1: {"error": {"code", "message"}}
        code, message = error.get("code", ""), error.get("message", "")
    elif isinstance(error, str):  # /v2: {"error": "..."}
        code, message = "", error
    else:
        code, message = "", response.text
    return SluiceError(response.status_code, code, message, _retry_after(response))


def _translation_body(texts, source_lang, target_lang, beams, max_new_tokens):
    payload = {
        "fromLang": source_lang,
        "toLang": target_lang,
        "records": [{"id": str(i), "text": t} for i, t in enumerate(texts)],
    }
    if beams is not None:
        payload["beams"] = beams
    if max_new_tokens is not None:
        payload["maxNewTokens"] = max_new_tokens
    return {"payload": payload}


def _translations(body, count):
    by_id = {r["id"]: r["text"] for r in body["result"]}
    return [by_id[str(i)] for i in range(count)]


def _v2_body(inputs, parameters, outputs):
    tensors = []
    for name, data in inputs.items():
        data = list(data)
        datatype = "BYTES" if all(isinstance(d, (str, bytes)) for d in data) else "FP32"
        data = [d.decode() if isinstance(d, bytes) else d for d in data]
        tensors.append({"name": name, "datatype": datatype, "shape": [len(data)], "data": data})
    body = {"inputs": tensors}
    if parameters:
        body["parameters"] = parameters
    if outputs:
        body["outputs"] = [{"name": o} for o in outputs]
    return body


def _v2_outputs(body):
    return {o["name"]: o["data"] for o in body["outputs"]}


def _auth_headers(api_key):
    """`Authorization: Bearer` for a server started with `--api-key`."""
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


class _Retry:
    """When to try again, shared by both clients."""

    def __init__(self, retries, max_wait):
        self.retries = retries
        self.max_wait = max_wait

    def wait(self, attempt, response=None):
        """Seconds to wait before attempt `attempt + 1`, or None to give up."""
        if attempt >= self.retries:
            return None
        if response is not None:
            if response.status_code not in RETRIED_STATUSES:
                return None
            asked = _retry_after(response)
            if asked is not None:
                return min(asked, self.max_wait)
        return min(0.1 * (2**attempt), self.max_wait)


class Client:
    """A synchronous client; use it as a context manager or call `close()`."""

    def __init__(
        self, url="http://127.0.0.1:9527", *, api_key=None, timeout=60.0, retries=5, max_wait=30.0
    ):
        self._http = httpx.Client(
            base_url=url.rstrip("/"), timeout=timeout, headers=_auth_headers(api_key)
        )
        self._retry = _Retry(retries, max_wait)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._http.close()

    def _request(self, method, path, json=None):
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, json=json)
            except httpx.TransportError:
                wait = self._retry.wait(attempt)
                if wait is None:
                    raise
            else:
                if response.is_success:
                    return response
                wait = self._retry.wait(attempt, response)
                if wait is None:
                    raise _error(response)
            time.sleep(wait)
            attempt += 1

    def translate(self, texts, source_lang, target_lang, *, beams=None, max_new_tokens=None):
        """Translations of `texts`, in order (`POST /translation`)."""
        texts = list(texts)
        body = _translation_body(texts, source_lang, target_lang, beams, max_new_tokens)
        return _translations(self._request("POST", "/translation", body).json(), len(texts))

    def models(self):
        """What the server serves (`GET /v1/models`)."""
        return self._request("GET", "/v1/models").json()

    def infer(self, model, inputs, parameters=None):
        """`POST /v1/models/{model}/infer`: `inputs` are `{"id", "text"|"data"|"path"|"url"}`."""
        body = {"inputs": list(inputs), "parameters": parameters or {}}
        return self._request("POST", f"/v1/models/{model}/infer", body).json()

    def v2_infer(self, model, inputs, parameters=None, outputs=None):
        """`POST /v2/models/{model}/infer` with JSON tensors: `inputs` maps each input's name
        to its elements; returns each output's data by name."""
        body = _v2_body(inputs, parameters, outputs)
        return _v2_outputs(self._request("POST", f"/v2/models/{model}/infer", body).json())

    def ready(self):
        """Whether the server takes work now (`GET /readyz`, not retried)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False


class AsyncClient:
    """The asyncio client: `Client`'s methods as coroutines."""

    def __init__(
        self, url="http://127.0.0.1:9527", *, api_key=None, timeout=60.0, retries=5, max_wait=30.0
    ):
        self._http = httpx.AsyncClient(
            base_url=url.rstrip("/"), timeout=timeout, headers=_auth_headers(api_key)
        )
        self._retry = _Retry(retries, max_wait)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def close(self):
        await self._http.aclose()

    async def _request(self, method, path, json=None):
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, path, json=json)
            except httpx.TransportError:
                wait = self._retry.wait(attempt)
                if wait is None:
                    raise
            else:
                if response.is_success:
                    return response
                wait = self._retry.wait(attempt, response)
                if wait is None:
                    raise _error(response)
            await asyncio.sleep(wait)
            attempt += 1

    async def translate(self, texts, source_lang, target_lang, *, beams=None, max_new_tokens=None):
        """Translations of `texts`, in order (`POST /translation`)."""
        texts = list(texts)
        body = _translation_body(texts, source_lang, target_lang, beams, max_new_tokens)
        response = await self._request("POST", "/translation", body)
        return _translations(response.json(), len(texts))

    async def models(self):
        """What the server serves (`GET /v1/models`)."""
        return (await self._request("GET", "/v1/models")).json()

    async def infer(self, model, inputs, parameters=None):
        """`POST /v1/models/{model}/infer`."""
        body = {"inputs": list(inputs), "parameters": parameters or {}}
        return (await self._request("POST", f"/v1/models/{model}/infer", body)).json()

    async def v2_infer(self, model, inputs, parameters=None, outputs=None):
        """`POST /v2/models/{model}/infer` with JSON tensors."""
        body = _v2_body(inputs, parameters, outputs)
        return _v2_outputs((await self._request("POST", f"/v2/models/{model}/infer", body)).json())

    async def ready(self):
        """Whether the server takes work now (`GET /readyz`, not retried)."""
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False
