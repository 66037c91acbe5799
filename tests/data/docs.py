"""Document files for ingest tests: a PDF with text (written by hand, no PDF library needed), an
image-only one, an encrypted one, a truncated one, and a mixed directory with broken files."""

from __future__ import annotations

import io
import json
from pathlib import Path


def text_pdf(lines: list[str]) -> bytes:
    """A one-page PDF whose content stream draws ``lines`` in Helvetica."""
    content = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({ln}) Tj T*" for ln in lines) + " ET"
    objs = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for i, o in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{o}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def blank_pdf(encrypt: bool = False) -> bytes:
    """A page with no text (what a scanned image gives a text extractor); optionally encrypted."""
    from pypdf import PdfWriter

    w = PdfWriter()
    w.add_blank_page(612, 792)
    if encrypt:
        w.encrypt("secret", algorithm="RC4-128")
    buf = io.BytesIO()
    w.write(buf)
    return buf.getvalue()


MARKDOWN = """# Tides

The tide rises twice a day because the moon pulls the oceans.
Spring tides happen at new and full moon, when sun and moon align.
"""

HTML = """<html><head><title>Volcanoes</title><style>p {color: red}</style>
<script>var x = "not text";</script></head>
<body><h1>Volcanoes</h1><p>Magma rises through the crust &amp; erupts as lava.</p>
<ul><li>Shield volcanoes are broad.</li><li>Stratovolcanoes are steep.</li></ul></body></html>"""


def mixed_directory(root: Path) -> Path:
    """Good and broken files of every kind the ingest reads, in nested folders."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "notes").mkdir()
    (root / "notes" / "tides.md").write_text(MARKDOWN)
    (root / "volcanoes.html").write_text(HTML)
    (root / "plain.txt").write_text("Bees dance to tell the hive where flowers are.\n")
    (root / "paper.pdf").write_bytes(text_pdf(["Glaciers carve valleys.", "Ice flows slowly."]))
    (root / "scan.pdf").write_bytes(blank_pdf())
    (root / "locked.pdf").write_bytes(blank_pdf(encrypt=True))
    good = text_pdf(["This one is cut off."])
    (root / "cut.pdf").write_bytes(good[: len(good) // 3])
    (root / "empty.md").write_bytes(b"")
    (root / "fake.csv").write_bytes(b"PK\x03\x04\x00\x00binary zip bytes\x00\x01")
    (root / "unknown.bin").write_bytes(b"\x01\x02")
    (root / ".hidden.md").write_text("# skipped")
    return root


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path
