"""Request bodies bounded before they are read whole, for every HTTP service."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Render = Callable[[str, int, str, str], dict[str, Any]]
"""(path, status, field, reason) -> the JSON body of a refusal."""


class BodyLimit:
    """Refuse bodies over `max_bytes` with 413: by Content-Length up front, else while reading."""

    def __init__(self, app: ASGIApp, max_bytes: int, setting: str = "max_request_bytes",
                 render: Render | None = None) -> None:
        """`setting`: the config field an operator raises, named in the refusal. `render`: the
        refusal's body in the shape of the route refused (default `{"detail": ...}`); a body over
        the limit found while reading is raised as HTTPException(413) for the app's handler."""
        self.app, self.max_bytes, self.setting, self.render = app, max_bytes, setting, render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                body = ({"detail": self._too_big()} if self.render is None
                        else self.render(scope["path"], 413, "body", self._too_big()))
                await JSONResponse(body, status_code=413)(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # chunked upload without a Content-Length
                raise HTTPException(413, self._too_big())
            return message

        await self.app(scope, limited, send)

    def _too_big(self) -> str:
        return f"request body over the {self.max_bytes}-byte limit ({self.setting})"
