"""Google's Gemini API as clients see it, mounted under `/google`: Imagen `:predict` and Gemini
`:generateContent`.

A client changes `https://generativelanguage.googleapis.com` to `https://imagegate.example/google`
and keeps its code; with the official `google-genai` SDK that is
`genai.Client(api_key=<imagegate key>, http_options=types.HttpOptions(base_url=".../google"))`.
Vertex AI's express-mode paths (`/v1beta1/publishers/google/models/{model}:predict`, what the SDK
calls with `vertexai=True` and an API key, and the only mode in which `google-genai` 3.x still offers
`generate_images`) are served too, with the same bodies. The key is read from `x-goog-api-key` (what
the SDK sends) or the `?key=` query parameter.

- `POST /google/v1beta/models/{imagen model}:predict`: `{"instances": [{"prompt"}], "parameters":
  {"sampleCount", "aspectRatio", "negativePrompt", ...}}` answers `{"predictions":
  [{"bytesBase64Encoded", "mimeType"}]}` with the moderated, signed images (withheld ones left out,
  as Google leaves out the images its own filter removes). Image inputs in an instance (Vertex's
  editing) are refused: only text-to-image is served here.
- `POST /google/v1beta/models/{gemini model}:generateContent`: `contents[].parts[]` with `text` and
  `inlineData`/`inline_data` images (edits) answers `candidates[0].content.parts[]` with the
  model's text and the images as `inlineData`. Every text part of every turn and of
  `systemInstruction` is joined into the one prompt that is screened and sent upstream as a single
  turn, so nothing reaches the model unscreened; every inline image goes through the input-image
  check. Images by reference (`fileData`) are refused, since they could not be screened first.
  Only `generationConfig` and `safetySettings` are forwarded besides.

Errors use Google's shape, `{"error": {"code", "message", "status"}}`: a moderation block is
400 `INVALID_ARGUMENT`, as Imagen reports a refused prompt.

In provenance sidecar/both mode each Imagen prediction also carries its image's C2PA manifest
store, base64, as `c2paManifestBase64Encoded`; a Gemini answer (whose parts hold nothing else)
names each image's store in a `Link: <signed URL>; rel="c2pa-manifest"` header, one per image in
the order of the image parts.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from aiohttp import web

from ..errors import ImagegateError, InvalidRequestError, UpstreamStatusError
from ..exchange import FORMATS, Exchange, GenerationRequest, InputImage, sniff_media_type
from ..stages.provenance import sidecars
from .google import ASPECT_RATIOS, b64decode, inline_data
from .surface import ParseContext, SurfaceRoute, load_json_object, read_limited

PREFIX = "/google"
#: Beside `bytesBase64Encoded` in an Imagen prediction, in provenance sidecar mode: the image's C2PA
#: manifest store (`application/c2pa`), base64.
MANIFEST_FIELD = "c2paManifestBase64Encoded"
#: The Gemini API's model path, and Vertex AI's in express mode (an API key, no project).
_MODEL_PATHS = (
    "{version:v1beta|v1|v1alpha}/models/{model:[A-Za-z0-9._-]+}",
    "{version:v1beta1|v1}/publishers/google/models/{model:[A-Za-z0-9._-]+}",
)
SIZES = {ratio: size for size, ratio in ASPECT_RATIOS.items()}
STATUS_NAMES = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    409: "ABORTED", 413: "INVALID_ARGUMENT", 415: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL", 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}
_INSTANCE_IMAGES = {"image", "referenceImages", "mask", "video"}


def _inline_image(data: dict[str, Any], where: str) -> InputImage:
    try:
        raw = b64decode(str(data.get("data") or ""))
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestError(f"{where}.data: invalid base64.", param=where) from exc
    media_type = sniff_media_type(raw)
    if media_type is None:
        raise InvalidRequestError(f"{where}: only PNG, JPEG or WebP images are accepted.", param=where)
    return InputImage(raw, media_type, where)


class GoogleSurface:
    name = "google"

    def routes(self) -> list[SurfaceRoute]:
        return [
            SurfaceRoute("POST", f"{PREFIX}/{path}:{method}", "generate", options={"method": method})
            for path in _MODEL_PATHS
            for method in ("predict", "generateContent")
        ]

    def credential(self, request: web.Request) -> str | None:
        return request.headers.get("x-goog-api-key") or request.query.get("key") or None

    async def parse(self, request: web.Request, route: SurfaceRoute, context: ParseContext) -> GenerationRequest:
        body = load_json_object(await read_limited(request, context.max_body_bytes))
        model = request.match_info["model"]
        if route.options["method"] == "predict":
            return self._predict(model, body)
        return self._content(model, body)

    # -- Imagen ----------------------------------------------------------------------------------

    def _predict(self, model: str, body: dict[str, Any]) -> GenerationRequest:
        instances = body.get("instances")
        if not isinstance(instances, list) or len(instances) != 1 or not isinstance(instances[0], dict):
            raise InvalidRequestError("instances: exactly one instance is required.", param="instances")
        instance = instances[0]
        if _INSTANCE_IMAGES & set(instance):
            raise InvalidRequestError("instances[0]: image inputs are not supported on :predict; use text-to-image.", param="instances")
        prompt = instance.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise InvalidRequestError("instances[0].prompt: required.", param="instances[0].prompt", code="missing_required_parameter")
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidRequestError("parameters: must be an object.", param="parameters")
        n = parameters.get("sampleCount", 1)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 4:
            raise InvalidRequestError("parameters.sampleCount: must be an integer from 1 to 4.", param="parameters.sampleCount")
        ratio = parameters.get("aspectRatio")
        if ratio is not None and ratio not in SIZES:
            raise InvalidRequestError(f"parameters.aspectRatio: must be one of {', '.join(SIZES)}.", param="parameters.aspectRatio")
        negative = parameters.get("negativePrompt")
        mime = (parameters.get("outputOptions") or {}).get("mimeType") if isinstance(parameters.get("outputOptions"), dict) else None
        return GenerationRequest(
            operation="generate",
            model=model,
            prompt=prompt,
            negative_prompt=negative if isinstance(negative, str) and negative else None,
            n=n,
            size=SIZES.get(ratio) if ratio else None,
            output_format=FORMATS.get(str(mime), "png"),
            response_format="b64_json",
            extra={"parameters": {key: value for key, value in parameters.items() if key not in ("sampleCount", "negativePrompt")}},
        )

    # -- Gemini ----------------------------------------------------------------------------------

    def _content(self, model: str, body: dict[str, Any]) -> GenerationRequest:
        contents = body.get("contents")
        if isinstance(contents, dict):
            contents = [contents]
        if not isinstance(contents, list) or not contents:
            raise InvalidRequestError("contents: at least one content is required.", param="contents")
        texts: list[str] = []
        images: list[InputImage] = []
        system = body.get("systemInstruction", body.get("system_instruction"))
        sources = ([("systemInstruction", system)] if isinstance(system, dict) else []) + [
            (f"contents[{index}]", content) for index, content in enumerate(contents)
        ]
        for where, content in sources:
            self._read_parts(content, where, texts, images)
        prompt = "\n\n".join(text for text in texts if text.strip())
        if not prompt:
            raise InvalidRequestError("contents: a text part is required (every prompt is screened).", param="contents")
        config = body.get("generationConfig", body.get("generation_config")) or {}
        if not isinstance(config, dict):
            raise InvalidRequestError("generationConfig: must be an object.", param="generationConfig")
        config = dict(config)
        n = config.pop("candidateCount", 1)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 4:
            raise InvalidRequestError("generationConfig.candidateCount: must be an integer from 1 to 4.", param="generationConfig.candidateCount")
        extra: dict[str, Any] = {"generationConfig": config}
        if isinstance(body.get("safetySettings"), list):
            extra["safetySettings"] = body["safetySettings"]
        return GenerationRequest(
            operation="edit" if images else "generate",
            model=model,
            prompt=prompt,
            n=n,
            output_format="png",
            response_format="b64_json",
            images=images,
            extra=extra,
        )

    @staticmethod
    def _read_parts(content: Any, where: str, texts: list[str], images: list[InputImage]) -> None:
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list):
            raise InvalidRequestError(f"{where}.parts: must be a list.", param=f"{where}.parts")
        for index, part in enumerate(parts):
            place = f"{where}.parts[{index}]"
            if not isinstance(part, dict):
                raise InvalidRequestError(f"{place}: must be an object.", param=place)
            data = inline_data(part)
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif data is not None:
                images.append(_inline_image(data, f"{place}.inlineData"))
            elif "fileData" in part or "file_data" in part:
                raise InvalidRequestError(
                    f"{place}: images by reference (fileData) are not accepted; send them as inlineData so they are screened.",
                    param=place,
                )
            else:
                raise InvalidRequestError(f"{place}: only text and inlineData parts are accepted.", param=place)

    # -- answers ---------------------------------------------------------------------------------

    def render_result(self, exchange: Exchange, request: web.Request) -> web.Response:
        result = exchange.result
        assert result is not None
        released = [image for image in result.images if not image.withheld]
        if request.path.endswith(":predict"):
            stores = sidecars(exchange)
            predictions = []
            for index, image in enumerate(result.images):
                if image.withheld:
                    continue
                prediction = {"bytesBase64Encoded": base64.b64encode(image.data).decode("ascii"), "mimeType": image.media_type}
                if index in stores:  # provenance sidecar mode: the manifest store beside the bytes
                    prediction[MANIFEST_FIELD] = base64.b64encode(stores[index].data).decode("ascii")
                predictions.append(prediction)
            return web.json_response({"predictions": predictions})
        parts: list[dict[str, Any]] = []
        if result.metadata.get("text"):
            parts.append({"text": result.metadata["text"]})
        for image in released:
            parts.append({"inlineData": {"mimeType": image.media_type, "data": base64.b64encode(image.data).decode("ascii")}})
        body: dict[str, Any] = {
            "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
            "modelVersion": result.metadata.get("model_version") or result.model,
            "responseId": exchange.request_id,
        }
        if isinstance(result.metadata.get("usage_metadata"), dict):
            body["usageMetadata"] = result.metadata["usage_metadata"]
        return web.json_response(body)

    def links_sidecars(self, request: web.Request) -> bool:
        return not request.path.endswith(":predict")  # Gemini's parts hold nothing but the image

    def render_error(self, error: ImagegateError) -> web.Response:
        if isinstance(error, UpstreamStatusError):
            return web.Response(body=error.body, status=error.status, content_type=error.content_type.split(";")[0] or "application/json")
        name = STATUS_NAMES.get(error.status, "INTERNAL" if error.status >= 500 else "INVALID_ARGUMENT")
        body = {"error": {"code": error.status, "message": error.message, "status": name}}
        return web.Response(body=json.dumps(body), status=error.status, content_type="application/json", headers=error.headers)

