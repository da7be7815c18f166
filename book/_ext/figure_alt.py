"""Sphinx extension of the book: an image from a notebook output gets its alt text from
the PNG itself.

``icl_lib.plotting`` (from ``use_house_style()`` on) writes each figure's alt text into
the PNG's ``Description`` text chunk; MyST-NB leaves an output image without ``alt``
unless the cell's metadata gives one (``mystnb: {image: {alt: ...}}``, which wins).
Here, when a page is read, every image without alt text whose file is a PNG with such a
chunk gets it as ``alt``, so that the HTML has ``<img alt="...">`` and not the file
name. Loaded by ``_config.yml`` (``sphinx.local_extensions``).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from docutils import nodes

KEY = "Description"
_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_text(data: bytes) -> dict[str, str]:
    """The text chunks (``tEXt``, ``zTXt``, ``iTXt``) of PNG ``data`` as ``{keyword:
    text}``; ``{}`` if not a PNG."""
    if not data.startswith(_SIGNATURE):
        return {}
    found, offset = {}, len(_SIGNATURE)
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        body = data[offset + 8 : offset + 8 + length]
        offset += 12 + length
        try:
            if kind == b"tEXt":
                keyword, text = body.split(b"\0", 1)
                found[keyword.decode("latin-1")] = text.decode("latin-1")
            elif kind == b"zTXt":
                keyword, rest = body.split(b"\0", 1)
                found[keyword.decode("latin-1")] = zlib.decompress(rest[1:]).decode(
                    "latin-1"
                )
            elif kind == b"iTXt":
                keyword, rest = body.split(b"\0", 1)
                compressed, rest = rest[0], rest[2:]
                _language, _translated, text = rest.split(b"\0", 2)
                found[keyword.decode("latin-1")] = (
                    zlib.decompress(text) if compressed else text
                ).decode("utf-8")
            elif kind == b"IEND":
                break
        except (ValueError, IndexError, zlib.error, UnicodeDecodeError):
            continue  # a malformed chunk: no alt text from it
    return found


def fill_alt_text(app, doctree) -> None:
    for image in doctree.findall(nodes.image):
        if image.get("alt") or not str(image.get("uri", "")).lower().endswith(".png"):
            continue
        # By doctree-read, Sphinx's image collector has made ``uri`` and ``candidates``
        # relative to the source folder.
        candidate = image.get("candidates", {}).get("*")
        path = (
            Path(app.srcdir) / candidate
            if candidate
            else Path(app.env.relfn2path(image["uri"], app.env.docname)[1])
        )
        try:
            text = png_text(Path(path).read_bytes()).get(KEY, "").strip()
        except OSError:
            continue
        if text:
            image["alt"] = text


def setup(app):
    # after the image collector (priority 500)
    app.connect("doctree-read", fill_alt_text, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
