"""Security headers for the /ui viewer page.

The viewer is one HTML file with one inline <style> and one inline <script> (no CDN, no fonts, no images), which
calls this server's own API with fetch. Its Content-Security-Policy allows exactly that: the inline blocks by their
SHA-256 hash (so an injected <script> or style attribute would not run), fetch to the same origin, and nothing else
(no frames, forms, plugins, base URL changes, or framing by another site).
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache

_BLOCK = re.compile(r"<(script|style)>(.*?)</\1>", re.S)


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


@lru_cache(maxsize=4)
def content_security_policy(page: str) -> str:
    """The page's CSP: its inline scripts and styles by hash, connections to this origin only."""
    scripts = [_hash(body) for kind, body in _BLOCK.findall(page) if kind == "script"]
    styles = [_hash(body) for kind, body in _BLOCK.findall(page) if kind == "style"]
    return "; ".join(
        [
            "default-src 'none'",
            "script-src " + (" ".join(scripts) or "'none'"),
            "style-src " + (" ".join(styles) or "'none'"),
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


def viewer_headers(page: str) -> dict[str, str]:
    """Headers sent with the viewer page."""
    return {
        "Content-Security-Policy": content_security_policy(page),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
