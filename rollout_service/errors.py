"""Refusals of the rollout API, in one declared shape per surface.

Native routes (/v1/rollouts, /v1/weights, the probes) answer `ErrorBody`: `{"detail": "<field>: <why>",
"field": "<field>"}`. The OpenAI surface (/v1/completions, /v1/models) answers `OpenAIError`:
`{"error": {"message", "type", "param", "code"}}` as OpenAI's API does, so the official clients raise
their usual exceptions (400 BadRequestError, 404 NotFoundError, ...). `install` makes every refusal
the app produces (validation, HTTP errors such as 404/405/413, the engine's InvalidRequest and the
transports' WeightError) take the shape of the route it belongs to; `render` does the same for ASGI
middleware that answers before a route runs (the body limit, the bearer tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.routing import Match

from protocol.transport import WeightError
from rollout_service.engine import InvalidRequest

OPENAI_PATHS = ("/v1/completions", "/v1/models")
"""Path prefixes of the OpenAI surface (rollout_service/openai_api.py)."""


def is_openai(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in OPENAI_PATHS)


class ErrorBody(BaseModel):
    """A refusal on the native routes."""

    detail: str = Field(description="'<field>: <why>'; never quotes the input.")
    field: str = Field(description="The request field to fix, dotted (e.g. 'prompts.0.sampling.seed'); "
                                   "'body' for the body as a whole, 'authorization' for the token, "
                                   "'path' / 'method' for a route that does not exist.")


class OpenAIErrorDetail(BaseModel):
    message: str = Field(description="What is wrong, naming the parameter.")
    type: str = Field(description="'invalid_request_error' (every 4xx, as OpenAI's), 'server_error' (503).")
    param: str | None = Field(description="The request field to fix, dotted; null when none is at fault.")
    code: str | None = Field(description="Machine-readable reason, e.g. 'invalid_value', 'invalid_type', "
                                         "'unknown_parameter', 'unsupported_parameter', "
                                         "'missing_required_parameter', 'context_length_exceeded', "
                                         "'model_not_found', 'invalid_api_key', 'request_too_large'.")


class OpenAIError(BaseModel):
    """A refusal on the OpenAI surface, in OpenAI's shape."""

    error: OpenAIErrorDetail


_OPENAI_TYPE = {503: "server_error"}  # OpenAI's 401s are invalid_request_error too
_OPENAI_CODE = {401: "invalid_api_key", 403: "insufficient_permissions", 404: "not_found",
                405: "method_not_allowed", 409: "conflict", 413: "request_too_large",
                429: "rate_limit_exceeded", 503: "engine_unavailable"}


def render(path: str, status: int, field: str | None, message: str, code: str | None = None) -> dict[str, Any]:
    """The JSON body of a refusal of `path`, in that route's shape. `message` is the reason alone
    (no field prefix); `code` (OpenAI's) defaults by status."""
    if is_openai(path):
        return {"error": {"message": f"{field}: {message}" if field else message,
                          "type": _OPENAI_TYPE.get(status, "invalid_request_error"),
                          "param": field, "code": code or _OPENAI_CODE.get(status, "invalid_value")}}
    field = field or "body"
    return {"detail": f"{field}: {message}", "field": field}


def refuse(request: Request, status: int, field: str | None, message: str, code: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(render(request.url.path, status, field, message, code), status_code=status,
                        headers=headers)


def utf8_only(data: Any) -> Any:
    """Refuse strings JSON can carry but UTF-8 cannot (lone surrogates, "\\ud800"), keys included,
    naming where: for a model's `mode="before"` validator. Returns `data` unchanged."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(f"{path or 'body'}: not valid Unicode (lone surrogate at index "
                                 f"{exc.start})") from None
        elif isinstance(value, dict):
            for k, v in value.items():
                key = _readable(k)
                stack.append((f"{path}.{key}" if path else key, k))
                stack.append((f"{path}.{key}" if path else key, v))
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), v) for i, v in enumerate(value))
    return data


def _readable(part: object) -> str:
    # A key of the request (an unknown field) is echoed: it must encode, and stay short.
    return str(part).encode("utf-8", "backslashreplace").decode()[:80]


def _is_union_tag(part: object, before: object) -> bool:
    """Pydantic adds the member of a union it tried to the location: 'constrained-str',
    'list[int]', 'MathReference', or a tagged union's tag ('math' after 'reference')."""
    if not isinstance(part, str):
        return False
    return (not part.isidentifier() or part[0].isupper() or part in ("str", "int", "float", "bool", "none")
            or (before == "reference" and part in ("math", "code")))


def problem(error: dict[str, Any]) -> tuple[str, str, str]:
    """(field, message, OpenAI code) of one pydantic error; the input is never quoted (it may be
    NaN, or not encode as UTF-8)."""
    raw = [p for p in error["loc"] if p != "body"]
    loc = [_readable(p) for i, p in enumerate(raw) if not _is_union_tag(p, raw[i - 1] if i else None)]
    msg, kind = str(error["msg"]), str(error["type"])
    code = "invalid_value"
    if kind == "json_invalid":
        return "body", f"not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})", "invalid_json"
    if kind == "extra_forbidden":
        msg, code = "unknown field: this server does not take it", "unknown_parameter"
    elif kind == "missing":
        msg, code = "required", "missing_required_parameter"
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        loc, msg = [*loc, "kind"], "must be 'math' or 'code'"
    elif msg.startswith("Value error, "):  # a model validator: "<field>: <why>" or just "<why>"
        msg = msg.removeprefix("Value error, ")
        head, sep, rest = msg.partition(": ")
        if sep and all(h.isidentifier() or h.isdigit() for h in head.split(".")):
            loc, msg = [*loc, *head.split(".")], rest
    return ".".join(loc) or "body", msg, code


def _wrong_type(error: dict[str, Any]) -> bool:
    return str(error["type"]).endswith(("_type", "_parsing"))


def first_problem(errors: Sequence[dict[str, Any]]) -> tuple[str, str, str]:
    """The error to report. A refused field (unknown, unsupported) first, as a client fixes those
    first; else the first field's. For a union (`prompt`: text, texts, ids...), the member whose
    shape matched but whose value did not (a too-short string in a list of texts), not the
    members of another shape."""
    problems = [problem(e) for e in errors]
    for p in problems:
        if p[2] in ("unknown_parameter", "invalid_json"):
            return p
    top = problems[0][0].split(".", 1)[0]
    same = [(e, p) for e, p in zip(errors, problems) if p[0].split(".", 1)[0] == top]
    if len(same) > 1:
        shaped = [(e, p) for e, p in same if not _wrong_type(e)]
        if not shaped:
            return top, "has the wrong type", "invalid_type"
        return max(shaped, key=lambda ep: len(ep[0]["loc"]))[1]
    return problems[0]


def install(app: FastAPI, unsupported: dict[str, str] | None = None) -> None:
    """Exception handlers that answer every refusal in its route's shape. `unsupported`: OpenAI
    fields this server declares but does not honour (name -> what it accepts), refused by name."""
    unsupported = unsupported or {}

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        field, msg, code = first_problem(exc.errors())
        top = field.split(".", 1)[0]
        openai = is_openai(request.url.path)
        if openai and top in unsupported:
            field, msg, code = top, f"not supported by this server ({unsupported[top]})", "unsupported_parameter"
        # OpenAI answers every malformed request with 400; the native routes keep FastAPI's 422.
        return refuse(request, 400 if openai else 422, field, msg, code)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        status = exc.status_code
        # 400: FastAPI could not parse the body (too deep, not JSON); 413: over the limit while read.
        field = {400: "body", 413: "body", 404: "path", 405: "method"}.get(status)
        detail = "could not be parsed" if status == 400 else str(exc.detail)
        code = "invalid_json" if status == 400 else None
        headers = dict(exc.headers or {})
        if status == 405:  # Starlette names the first route on the path only; list every one's
            headers["Allow"] = ", ".join(_methods(request))
        return refuse(request, status, field, detail, code, headers=headers)

    @app.exception_handler(InvalidRequest)
    async def refused(request: Request, exc: InvalidRequest) -> JSONResponse:
        message = str(exc).split(": ", 1)[1]
        code = "context_length_exceeded" if "context" in message else "invalid_value"
        return refuse(request, 400, exc.field, message, code)

    @app.exception_handler(WeightError)
    async def bad_weights(request: Request, exc: WeightError) -> JSONResponse:
        field, _, msg = str(exc).partition(": ")
        return refuse(request, 400, field, msg)


def _methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "\0"})  # a method no route has: path only
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def error_responses(model: type[BaseModel], codes: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each refusal code with its description and body model."""
    return {code: {"model": model, "description": text} for code, text in codes.items()}


NATIVE = {
    400: "Refused by the engine's or the transport's own checks (token ids outside the vocabulary, "
         "prompt + max_tokens over the context, an unreachable weight source); or a body that could "
         "not be parsed. `field` names it.",
    401: "No bearer token, or not a valid one (field: authorization).",
    403: "The token is valid but not for this route (field: authorization).",
    413: "The body is over rollout.max_request_bytes (field: body).",
    422: "The body breaks the request schema (types, bounds, unknown fields, cross-field rules); "
         "`field` names the first problem.",
}
OPENAI = {
    400: "Malformed or refused request: a value outside its range, an unknown field, a field OpenAI "
         "defines that this server does not honour, prompt + max_tokens over the context "
         "(code context_length_exceeded), a body that is not JSON. `param` names the field.",
    401: "No bearer token, or not a valid one (param: authorization).",
    403: "The token is valid but not for this route (param: authorization).",
    404: "The model is not served here (code model_not_found).",
    413: "The body is over rollout.max_request_bytes (code request_too_large).",
    503: "The engine has stopped (code engine_unavailable); the process is about to be replaced.",
}


def pick(table: dict[int, str], *codes: int) -> dict[int, str]:
    return {c: table[c] for c in codes}
