"""imagegate's error tree. Every failure a client can see is one of these, so that one place
(the API surface's `render_error`) can turn it into the provider's own error shape.

    ImagegateError                      status  type                    code
    ├── InvalidRequestError             400     invalid_request_error   (varies, e.g. invalid_json)
    │   ├── PayloadTooLargeError        413     invalid_request_error   payload_too_large
    │   ├── UnsupportedMediaError       415     invalid_request_error   unsupported_media_type
    │   └── RequestTimeoutError         408     invalid_request_error   request_timeout
    ├── ClientDisconnectedError         499     invalid_request_error   client_disconnected
    ├── AuthenticationError             401     invalid_request_error   invalid_api_key
    ├── PermissionDeniedError           403     invalid_request_error   permission_denied
    ├── ModelNotFoundError              404     invalid_request_error   model_not_found
    ├── ContentPolicyError              400     invalid_request_error   content_policy_violation
    ├── LicenceError                    403     invalid_request_error   licence_restriction
    ├── RateLimitError                  429     rate_limit_error        rate_limit_exceeded / budget_exceeded
    ├── StageFailedError                503     server_error            moderation_unavailable
    ├── AuditUnavailableError           503     server_error            audit_unavailable
    └── UpstreamError                   502     upstream_error          upstream_error
        ├── UpstreamTimeoutError        504     upstream_error          upstream_timeout
        ├── UpstreamConnectionError     502     upstream_error          upstream_connection_error
        ├── UpstreamBadResponseError    502     upstream_error          upstream_bad_response
        └── UpstreamStatusError         (the provider's own status and body, passed through)

Messages are written for the person reading the client's logs: what went wrong and what to do.
They never contain secrets, and moderation messages never echo the offending terms.
"""

from __future__ import annotations

from typing import Any


class ImagegateError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "type": self.type, "code": self.code, "message": self.message}


class InvalidRequestError(ImagegateError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class PayloadTooLargeError(InvalidRequestError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaError(InvalidRequestError):
    status = 415
    code = "unsupported_media_type"


class RequestTimeoutError(InvalidRequestError):
    """The client took longer than `server.body_timeout_s` to send its body (a slow or stalled client)."""

    status = 408
    code = "request_timeout"


class ClientDisconnectedError(ImagegateError):
    """The client hung up before its exchange finished. Nobody reads this error; it is what the audit
    record says happened (499, the status nginx logs for the same event)."""

    status = 499
    type = "invalid_request_error"
    code = "client_disconnected"


class AuthenticationError(ImagegateError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDeniedError(ImagegateError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class ModelNotFoundError(ImagegateError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class ContentPolicyError(ImagegateError):
    status = 400
    type = "invalid_request_error"
    code = "content_policy_violation"


class LicenceError(ImagegateError):
    status = 403
    type = "invalid_request_error"
    code = "licence_restriction"


class RateLimitError(ImagegateError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class StageFailedError(ImagegateError):
    """A safety stage failed and the failure policy is fail-closed."""

    status = 503
    type = "server_error"
    code = "moderation_unavailable"


class AuditUnavailableError(ImagegateError):
    status = 503
    type = "server_error"
    code = "audit_unavailable"


class UpstreamError(ImagegateError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamTimeoutError(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamConnectionError(UpstreamError):
    code = "upstream_connection_error"


class UpstreamBadResponseError(UpstreamError):
    code = "upstream_bad_response"


class UpstreamStatusError(UpstreamError):
    """The provider answered with an error of its own; its status and body go back unchanged."""

    code = "upstream_status"

    def __init__(self, status: int, body: bytes, content_type: str, message: str) -> None:
        super().__init__(message, status=status)
        self.body = body
        self.content_type = content_type
