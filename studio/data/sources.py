"""Where ingest reads from: allowed roots, files of a directory (local or fsspec URL), document
text extraction (plain text, Markdown, HTML, PDF) and Hugging Face ``datasets`` saved to disk.

A source is a file, a directory (every file under it, sorted, hidden files skipped) or an fsspec
URL of either. Local paths must lie under one of the allowed roots (``STUDIO_DATA_ROOTS``) and no
path may contain a ``..`` component, so a server-side ingest can't be pointed at /etc.
"""

from __future__ import annotations

import codecs
import html.parser
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.data.kinds import RowError
from studio.errors import StudioError
from studio.settings import StudioSettings

DOCUMENT_FORMATS = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown",
                    ".html": "html", ".htm": "html", ".pdf": "pdf"}
TEXT_SNIFF_BYTES = 64 * 1024
MAX_DOCUMENT_BYTES = 256 * 1024 * 1024


def allowed_roots(settings: StudioSettings) -> list[str]:
    """``STUDIO_DATA_ROOTS`` (comma-separated paths or URL prefixes), else the working
    directory, the user's home, STUDIO_HOME, the temp directory and the artifact store."""
    if settings.data_roots:
        raw = [r.strip() for r in settings.data_roots.split(",") if r.strip()]
    else:
        raw = [os.getcwd(), str(Path.home()), str(settings.home_abs), tempfile.gettempdir(),
               settings.artifacts]
    return [r if _is_url(r) else str(Path(r).expanduser().resolve()) for r in raw]


def _is_url(s: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", s)) and not s.startswith("file://")


def check_allowed(source: str, settings: StudioSettings) -> str:
    """Return the source to read (a resolved local path or a URL) or refuse it, naming the fix."""
    parts = re.split(r"[\\/]+", source)
    if ".." in parts:
        raise StudioError(f"path {source!r} contains '..'; refused",
                          "pass the path without '..' components (an absolute path works)",
                          status_code=403)
    roots = allowed_roots(settings)
    if _is_url(source):
        if any(source.startswith(r.rstrip("/") + "/") or source == r for r in roots if _is_url(r)):
            return source
        raise StudioError(f"URL {source!r} is outside the allowed data roots",
                          "add its prefix to STUDIO_DATA_ROOTS (comma-separated)", status_code=403)
    local = str(Path(source.removeprefix("file://")).expanduser().resolve())
    for r in roots:
        if not _is_url(r) and (local == r or local.startswith(r.rstrip(os.sep) + os.sep)):
            return local
    raise StudioError(f"path {local} is outside the allowed data roots ({', '.join(roots)})",
                      "move the data under one of them or add its directory to STUDIO_DATA_ROOTS",
                      status_code=403)


@dataclass
class SourceFile:
    """One file of a source: ``label`` names it in reasons (relative to the source root)."""

    label: str
    path: str  # local path or fsspec URL
    size: int
    remote: bool
    hf: bool = False  # a folder written by ``datasets.save_to_disk`` (read as one source)


def is_hf_dataset_dir(path: str) -> bool:
    return not _is_url(path) and os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, f)) for f in ("dataset_info.json", "dataset_dict.json",
                                                        "state.json"))


_HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def _hf_roots(files: list[str]) -> list[str]:
    """Top-level folders among ``files`` that ``datasets.save_to_disk`` wrote: a Dataset folder
    holds state.json and dataset_info.json, a DatasetDict folder dataset_dict.json."""
    names: dict[str, set[str]] = {}
    for p in files:
        names.setdefault(os.path.dirname(p), set()).add(os.path.basename(p))
    found = sorted(d for d, n in names.items()
                   if "dataset_dict.json" in n or {"state.json", "dataset_info.json"} <= n)
    top: list[str] = []
    for d in found:  # a DatasetDict's split folders belong to it
        if not any(d.startswith(t.rstrip("/") + "/") for t in top):
            top.append(d)
    return top


def is_directory(source: str) -> bool:
    import fsspec.core

    fs, root = fsspec.core.url_to_fs(source)
    return fs.isdir(root)


def list_files(source: str) -> list[SourceFile]:
    """The files of ``source`` (itself if a file), sorted; hidden files and folders skipped."""
    import fsspec.core

    fs, root = fsspec.core.url_to_fs(source)
    remote = _is_url(source)
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]

    def full(p: str) -> str:
        return f"{proto}://{p}" if remote else p

    if not fs.exists(root):
        raise StudioError(f"dataset source {source} does not exist", "check the path")
    if not fs.isdir(root):
        return [SourceFile(os.path.basename(root), full(root), fs.size(root) or 0, remote)]
    out = []
    found = {p: info for p, info in fs.find(root, detail=True).items()
             if not any(part.startswith(".") for part in os.path.relpath(p, root).split("/"))}
    # Hugging Face datasets saved to disk inside the directory are read whole, as one source each.
    hf_dirs = [] if remote else _hf_roots(list(found))
    for d in hf_dirs:
        size = sum(info.get("size") or 0 for p, info in found.items() if p.startswith(d + "/"))
        out.append(SourceFile(os.path.relpath(d, root), d, size, False, hf=True))
    for p, info in sorted(found.items()):
        if any(p.startswith(d + "/") for d in hf_dirs):
            continue
        out.append(SourceFile(os.path.relpath(p, root), full(p), info.get("size") or 0, remote))
    out.sort(key=lambda f: f.label)
    if not out:
        raise StudioError(f"directory {source} holds no files", "pass a directory with data files")
    return out


@contextmanager
def local_copy(f: SourceFile) -> Iterator[Path]:
    """A local path for the file: itself, or a temporary download of a remote file."""
    if not f.remote:
        yield Path(f.path)
        return
    import fsspec.core

    fs, p = fsspec.core.url_to_fs(f.path)
    with tempfile.TemporaryDirectory(prefix="studio-src-") as tmp:
        dest = Path(tmp) / (Path(p).name or "file")
        fs.get_file(p, str(dest))
        yield dest


def check_text_file(path: Path, fmt: str) -> None:
    """Refuse a file that claims a text format but holds binary data (NUL bytes)."""
    with path.open("rb") as f:
        head = f.read(TEXT_SNIFF_BYTES)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise StudioError(f"{path.name} claims to be {fmt} but is UTF-16 encoded",
                          "re-encode it as UTF-8")
    nul = head.find(b"\x00")
    if nul >= 0:
        raise StudioError(f"{path.name} claims to be {fmt} but holds binary data (a NUL byte at "
                          f"offset {nul})", f"pass a real {fmt} file, or give the file its true extension")


# --- documents ---------------------------------------------------------------------------------


class _HTMLText(html.parser.HTMLParser):
    """Visible text of an HTML page: script/style/head contents dropped, blocks on new lines."""

    SKIP = {"script", "style", "head", "noscript", "template", "svg"}
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article",
             "pre", "blockquote", "table", "ul", "ol", "hr", "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self.SKIP:
            self.skip += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self.skip:
            self.skip -= 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)


def html_text(raw: str) -> str:
    p = _HTMLText()
    p.feed(raw)
    p.close()
    lines = (re.sub(r"[ \t\r\f\v]+", " ", ln).strip() for ln in "".join(p.parts).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def pdf_text(path: Path) -> str:
    """Text of every page (pypdf, pure Python). Encrypted, truncated or image-only PDFs raise
    ``RowError`` with the reason."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            raise RowError("the PDF is encrypted; decrypt it (e.g. `qpdf --decrypt`) and ingest again")
        pages = [page.extract_text() or "" for page in reader.pages]
    except RowError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as e:
        raise RowError(f"the PDF cannot be read ({type(e).__name__}: {str(e)[:200]}); it may be "
                       "truncated or damaged — export it again") from None
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise RowError(f"the PDF's {len(pages)} page(s) hold no extractable text (scanned images?); "
                       "run OCR first (e.g. `ocrmypdf`)")
    return text


def document_text(path: Path, fmt: str) -> str:
    if path.stat().st_size > MAX_DOCUMENT_BYTES:
        raise RowError(f"the document is over {MAX_DOCUMENT_BYTES // 2**20} MiB; split it")
    if fmt == "pdf":
        return pdf_text(path)
    check_text_file(path, fmt)
    raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RowError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                       "re-encode the file as UTF-8") from None
    if fmt == "html":
        text = html_text(text)
    if not text.strip():
        raise RowError("the document holds no text")
    return text


# --- Hugging Face datasets saved to disk --------------------------------------------------------


def read_hf_dataset(path: str, batch_rows: int = 1024,
                    label: str | None = None) -> Iterator[tuple[str, int, Any]]:
    """Rows of ``datasets.load_from_disk(path)``; every split of a DatasetDict, labelled by split
    (``label``: the name rows are reported under; default the folder's name)."""
    import datasets

    try:
        ds = datasets.load_from_disk(path)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise StudioError(f"{path} is not a dataset saved with `save_to_disk`: {e}", "check the folder") from e
    splits = ds.items() if isinstance(ds, datasets.DatasetDict) else [("", ds)]
    for split, d in splits:
        name = label or os.path.basename(path.rstrip("/"))
        where = f"{name}{'[' + split + ']' if split else ''}"
        rowno = 0
        for batch in d.iter(batch_size=batch_rows):
            cols = list(batch)
            for i in range(len(batch[cols[0]]) if cols else 0):
                rowno += 1
                yield where, rowno, {c: batch[c][i] for c in cols}
