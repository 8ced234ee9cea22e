"""A fake Gemini API (Imagen `:predict`, Gemini `:generateContent`), from the documented shapes.

Sources: https://ai.google.dev/gemini-api/docs/imagen (`POST /v1beta/models/{model}:predict`,
`x-goog-api-key`, `{"instances": [{"prompt"}], "parameters": {"sampleCount", "aspectRatio",
"personGeneration"}}` answering `{"predictions": [{"bytesBase64Encoded", "mimeType"}]}`),
https://ai.google.dev/gemini-api/docs/image-generation (`POST /v1beta/models/{model}:generateContent`
with `contents[].parts[]` of `text` and `inline_data`/`inlineData`, answering
`candidates[].content.parts[]` with `text` and `inlineData {mimeType, data}`, plus `usageMetadata`),
https://ai.google.dev/api/generate-content (`promptFeedback.blockReason` when a prompt is refused)
and https://ai.google.dev/gemini-api/docs/troubleshooting (errors `{"error": {"code", "message",
"status"}}`; a bad key is 400 INVALID_ARGUMENT "API key not valid").

`block_reason` makes `:generateContent` refuse the prompt; `filter_all` makes `:predict` answer with
no predictions (every image removed by Google's filter); `fail_status` answers every call with
Google's error of that HTTP status.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.openai_upstream import make_image

STATUS_NAMES = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
                500: "INTERNAL", 503: "UNAVAILABLE"}


def error(status: int, message: str) -> web.Response:
    body = {"error": {"code": status, "message": message, "status": STATUS_NAMES.get(status, "UNKNOWN")}}
    return web.json_response(body, status=status)


@dataclass
class FakeGoogle:
    key: str = "AIza-upstream-key"
    block_reason: str | None = None
    filter_all: bool = False
    fail_status: int | None = None
    received: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1beta/models/{model}:predict", self.predict)
        app.router.add_post("/v1beta/models/{model}:generateContent", self.generate_content)
        return app

    async def _accept(self, request: web.Request) -> tuple[dict[str, Any] | None, web.Response | None]:
        if request.headers.get("x-goog-api-key") != self.key:
            return None, error(400, "API key not valid. Please pass a valid API key.")
        body = await request.json()
        self.received.append({"path": request.path, "model": request.match_info["model"], "body": body, "headers": dict(request.headers)})
        if self.fail_status is not None:
            return None, error(self.fail_status, "The service is currently unavailable." if self.fail_status >= 500 else "Resource has been exhausted (e.g. check quota).")
        return body, None

    async def predict(self, request: web.Request) -> web.Response:
        body, refused = await self._accept(request)
        if refused is not None:
            return refused
        assert body is not None
        if self.filter_all:
            return web.json_response({})
        count = int(body.get("parameters", {}).get("sampleCount", 4))
        predictions = [
            {"bytesBase64Encoded": base64.b64encode(make_image((40, 40), "png", (10 * index, 150, 60))).decode(), "mimeType": "image/png"}
            for index in range(count)
        ]
        return web.json_response({"predictions": predictions})

    async def generate_content(self, request: web.Request) -> web.Response:
        body, refused = await self._accept(request)
        if refused is not None:
            return refused
        assert body is not None
        if self.block_reason is not None:
            return web.json_response({"promptFeedback": {"blockReason": self.block_reason}, "modelVersion": request.match_info["model"]})
        parts = [part for content in body["contents"] for part in content["parts"]]
        inputs = sum(1 for part in parts if "inlineData" in part or "inline_data" in part)
        image = make_image((40, 40), "png", (200, 100 + 20 * inputs, 50))
        return web.json_response({
            "candidates": [{
                "content": {"role": "model", "parts": [
                    {"text": f"Here is your image ({inputs} input images)."},
                    {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(image).decode()}},
                ]},
                "finishReason": "STOP", "index": 0,
            }],
            "usageMetadata": {"promptTokenCount": 12 + 258 * inputs, "candidatesTokenCount": 1290, "totalTokenCount": 1302 + 258 * inputs},
            "modelVersion": request.match_info["model"],
            "responseId": "fake-response-id",
        })
