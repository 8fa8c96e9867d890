"""The Invite page: create an invite on the admin node, show it as text and as a QR code.

The token is exactly what ``meshcloud join TOKEN`` accepts; the QR code (drawn on the
server as SVG, no script involved) encodes the same text, so a phone under Termux can
scan it instead of typing. The form posts to this page (same-origin check as any change);
the token appears once, in the answer, and is never stored by the UI.
"""

from __future__ import annotations

import io
import urllib.parse
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshcloud.errors import MeshError
from meshcloud.web.render import render

if TYPE_CHECKING:
    from meshcloud.web.render import UiContext

TTL_CHOICES = ((600, "10 minutes"), (3600, "1 hour"), (86400, "1 day"), (7 * 86400, "1 week"))
MAX_USES = 100
MAX_FORM = 8192


def qr_svg(text: str) -> str:
    """``text`` as a QR code, an inline ``<svg>`` element (quiet zone included)."""
    import qrcode
    import qrcode.image.svg

    image = qrcode.make(text, image_factory=qrcode.image.svg.SvgPathImage, border=4)
    buffer = io.BytesIO()
    image.save(buffer)
    svg = buffer.getvalue().decode()
    return svg[svg.index("<svg"):]


async def small_form(request: Request, limit: int = MAX_FORM) -> dict[str, str]:
    """A URL-encoded form of a few fields (no multipart: the UI never uploads by form)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise MeshError(f"form over {limit} bytes", code="bad_request")
    fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"), max_num_fields=20)
    return {key: values[-1] for key, values in fields.items()}


def routes(ui: UiContext) -> list[Route]:
    def context() -> dict[str, object]:
        return {**ui.base("invite", "Invite"), "admin": ui.node.is_admin,
                "ttl_choices": TTL_CHOICES, "max_uses": MAX_USES, "token": None}

    async def page(request: Request) -> Response:
        return render("invite.html", **context())

    async def create(request: Request) -> Response:
        form = await small_form(request)
        try:
            ttl = float(form.get("ttl_s", "3600"))
            uses = int(form.get("uses", "1"))
        except ValueError:
            ttl, uses = 3600.0, 1
        ttl = min(max(ttl, 60.0), 30 * 86400.0)
        uses = min(max(uses, 1), MAX_USES)
        try:
            token = ui.node.create_invite(ttl_s=ttl, uses=uses)
        except MeshError as exc:
            return render("invite.html", status_code=403, **{**context(), "error": exc.message})
        text = token.encode()
        return render("invite.html", **{**context(), "token": text, "qr_svg": qr_svg(text),
                                        "expires_at": token.invite.body.expires_at,
                                        "uses": uses, "ttl": ttl,
                                        "bootstrap": list(token.invite.body.bootstrap)})

    return [Route("/ui/invite", page, methods=["GET"]),
            Route("/ui/invite", create, methods=["POST"])]
