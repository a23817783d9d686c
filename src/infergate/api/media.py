"""GET /media/{id}/{file_name}?expires=&sig=: generated files at signed, expiring URLs.

No key is needed: the URL is the capability (clients hand it to browsers and <img> tags, as fal's
URLs are used). A tampered or expired signature is a 403; a file past its retention a 404.
"""

from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from infergate.api.common import platform_of
from infergate.errors import NotFound
from infergate.schemas.common import error_responses
from infergate.storage.media import MediaRef

router = APIRouter(tags=["media"])


def _headers(ref: MediaRef, expires: str) -> dict[str, str]:
    remaining = max(int(expires) - int(time.time()), 0)
    return {
        # private: a shared cache must not keep serving it past the URL's expiry
        "Cache-Control": f"private, max-age={remaining}",
        "Content-Disposition": f'inline; filename="{ref.file_name}"',
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; img-src 'self'; media-src 'self'; sandbox",
    }


@router.api_route(
    "/media/{media_id}/{file_name}",
    methods=["GET", "HEAD"],
    responses={200: {"description": "The file"}, **error_responses(403, 404)},
    summary="A generated file (image, audio) at a signed URL",
)
async def get_media(request: Request, media_id: str, file_name: str) -> Response:
    media = platform_of(request).media
    expires = request.query_params.get("expires")
    media.verify(media_id, file_name, expires, request.query_params.get("sig"))
    assert expires is not None
    ref = await media.head(media_id)
    if ref.file_name != file_name:  # the signature covers the name; a mismatch means another file
        raise NotFound("This media file does not exist.", code="media_not_found")
    local = media.backend.local_path(media_id)
    if local is not None:
        return FileResponse(local, media_type=ref.content_type, headers=_headers(ref, expires))
    if request.method == "HEAD":
        headers = {**_headers(ref, expires), "Content-Length": str(ref.size)}
        return Response(status_code=200, media_type=ref.content_type, headers=headers)
    ref, data = await media.load(media_id)
    return Response(data, media_type=ref.content_type, headers=_headers(ref, expires))
