"""The reward API's refusals: one body shape (ErrorBody) for every 4xx, naming the field, and never
quoting the input (a lone surrogate or a NaN in it would turn the refusal into a 500)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from reward_service.api import ErrorBody

REFUSALS = {
    400: "The body could not be parsed (e.g. JSON nested too deep, a number too long).",
    401: "No bearer token, or not a valid one (field: authorization).",
    403: "The token is valid but not for this endpoint (field: authorization).",
    413: "The body is over reward.max_request_bytes.",
    422: "An item breaks a rule of the request schema (size bounds, Unicode, cross-field rules); "
         "`field` names it. Nothing in the batch was scored.",
}
_UNION_TAGS = {"math", "code"}  # pydantic puts a discriminated item's tag in the error location


def _field(loc: Sequence[int | str]) -> str:
    parts: list[str] = []
    for i, p in enumerate(loc):
        if (i == 0 and p == "body") or (p in _UNION_TAGS and i and isinstance(loc[i - 1], int)):
            continue
        # A key of the request (an unknown field) is echoed: it must encode, and stay short.
        parts.append(str(p).encode("utf-8", "backslashreplace").decode()[:80])
    return ".".join(parts) or "body"


def _problem(error: Any) -> tuple[str, str]:
    """(field, message) of one pydantic error, never quoting the input (it may not encode)."""
    loc, msg, kind = list(error["loc"]), str(error["msg"]), error["type"]
    if kind == "json_invalid":
        return "body", f"not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return _field([*loc, "task"]), "must be 'math' or 'code'"
    if msg.startswith("Value error, "):  # a model validator: "<field>: <why>" or just "<why>"
        msg = msg.removeprefix("Value error, ")
        head, sep, rest = msg.partition(": ")
        if sep and head.isidentifier():
            loc, msg = [*loc, head], rest
    return _field(loc), msg


def _refusal(status: int, field: str | None, detail: str, headers: dict[str, str] | None = None) -> Response:
    body = ErrorBody(detail=detail, field=field).model_dump_json(exclude_none=True)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def install(app: FastAPI) -> None:
    """Answer validation errors and HTTP exceptions (400 unparseable body, 413 while reading,
    404/405) with an ErrorBody."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        problems = [_problem(e) for e in exc.errors()]
        return _refusal(422, problems[0][0], "; ".join(f"{f}: {m}" for f, m in problems[:20]))

    @app.exception_handler(HTTPException)
    async def refused(_: Request, exc: HTTPException) -> Response:
        # 400 (an unparseable body) and a 413 found while reading belong to the body; 404/405 to the path.
        field = "body" if exc.status_code in (400, 413) else None
        detail = exc.detail if exc.status_code != 400 else "body: could not be parsed"
        return _refusal(exc.status_code, field, str(detail), exc.headers)
