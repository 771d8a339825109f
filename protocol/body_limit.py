"""Request bodies bounded before they are read whole, for every HTTP service."""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """Refuse bodies over `max_bytes` with 413: by Content-Length up front, else while reading."""

    def __init__(self, app: ASGIApp, max_bytes: int, setting: str = "max_request_bytes") -> None:
        """`setting`: the config field an operator raises, named in the refusal."""
        self.app, self.max_bytes, self.setting = app, max_bytes, setting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                await JSONResponse({"detail": self._too_big()}, status_code=413)(scope, receive, send)
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
