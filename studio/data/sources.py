"""Where ingest reads from: allowed roots, files of a directory (local or fsspec URL), document
text extraction (plain text, Markdown, HTML, PDF) and Hugging Face ``datasets`` saved to disk.

A source is a file, a directory (every file under it, sorted, hidden files skipped) or an fsspec
URL of either. A path a caller names over HTTP (an admin: non-admins name no server path) must lie
under one of the allowed roots (``STUDIO_DATA_ROOTS``, default ``$STUDIO_HOME`` and the artifact
store), after symlinks are resolved, with no ``..`` and no hidden component (``.ssh``, ``.env``)
below the root, also once URL-decoded — so a request can't reach ~/.ssh or write ~/.bash_profile.
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
from urllib.parse import unquote

from studio.access import Forbidden
from studio.data.kinds import RowError
from studio.egress import guard_url
from studio.errors import StudioError
from studio.settings import StudioSettings

DOCUMENT_FORMATS = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown",
                    ".html": "html", ".htm": "html", ".pdf": "pdf"}
TEXT_SNIFF_BYTES = 64 * 1024
MAX_DOCUMENT_BYTES = 256 * 1024 * 1024


def allowed_roots(settings: StudioSettings) -> list[str]:
    """``STUDIO_DATA_ROOTS`` (comma-separated paths or URL prefixes), else ``$STUDIO_HOME`` and
    the artifact store only: never the home directory, the temp directory or the working
    directory, where a write could plant ~/.bash_profile or a read could take ~/.ssh."""
    if settings.data_roots:
        raw = [r.strip() for r in settings.data_roots.split(",") if r.strip()]
    else:
        raw = [str(settings.home_abs), settings.artifacts]
    return [r if _is_url(r) else str(Path(r).expanduser().resolve()) for r in raw]


def _is_url(s: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", s)) and not s.startswith("file://")


def _decoded(source: str) -> str:
    """``source`` URL-decoded until it stops changing (``%252e`` is ``%2e`` is ``.``)."""
    for _ in range(5):
        plain = unquote(source)
        if plain == source:
            break
        source = plain
    return source


def _parts(path: str) -> list[str]:
    return [p for p in re.split(r"[\\/]+", path) if p]


def check_path_syntax(source: str, what: str = "path") -> str:
    """Refuse a source that is empty, has a ``..`` component or a NUL byte (also once
    URL-decoded); fast, before anything touches the filesystem. Returns it stripped."""
    source = (source or "").strip()
    if not source:
        raise StudioError(f"the {what} is empty", "name a file under STUDIO_DATA_ROOTS, or upload it")
    plain = _decoded(source)
    if "\x00" in plain:
        raise StudioError(f"{what} {source!r} holds a NUL byte", "pass a plain path")
    if ".." in _parts(plain.split("://", 1)[-1]):
        raise Forbidden(f"{what} {source!r} contains '..'"
                        + (" once URL-decoded" if ".." not in _parts(source) else "") + "; refused",
                        "pass the path without '..' components (an absolute path works)")
    return source


def _hidden_below(path: str, root: str) -> str | None:
    below = path[len(root):] if path.startswith(root) else path
    return next((p for p in _parts(_decoded(below)) if p.startswith(".")), None)


def check_allowed(source: str, settings: StudioSettings, what: str = "path") -> str:
    """Return the source to read or write (a resolved local path or a URL) or refuse it, naming
    the fix: 400 for an empty or relative path, 403 for one outside the roots, with ``..`` or a
    hidden component below its root. Symlinks are resolved first, so a link under a root that
    points outside is outside."""
    source = check_path_syntax(source, what)
    roots = allowed_roots(settings)
    if _is_url(source):
        for r in (r for r in roots if _is_url(r)):
            if source == r or source.startswith(r.rstrip("/") + "/"):
                _refuse_hidden(source, r.rstrip("/"), what)
                return guard_url(source, settings, what=f"dataset {what}")  # no loopback/private/metadata hosts
        raise Forbidden(f"URL {source!r} is outside the allowed data roots",
                        "add its prefix to STUDIO_DATA_ROOTS (comma-separated)")
    given = source.removeprefix("file://")
    if not os.path.isabs(given):
        raise StudioError(f"{what} {source!r} is not absolute",
                          f"pass an absolute path under one of {', '.join(roots)}")
    local = str(Path(given).resolve())
    for r in (r for r in roots if not _is_url(r)):
        if local == r or local.startswith(r.rstrip(os.sep) + os.sep):
            _refuse_hidden(local, r, what)
            hidden = _hidden_in_link(os.path.normpath(given), r)
            if hidden is not None:  # roots/.hidden/link -> roots/visible: the link's own path hides one
                raise Forbidden(f"{what} {given} has a hidden component {hidden!r}; refused",
                                "move the data to a folder without a leading '.'")
            return local
    raise Forbidden(f"{what} {local} is outside the allowed data roots ({', '.join(roots)})",
                    "move the data under one of them or add its directory to STUDIO_DATA_ROOTS")


def _hidden_in_link(given: str, root: str) -> str | None:
    """A hidden component of the path as given, below the first prefix of it that resolves into
    ``root`` (the root itself may be reached through a link or a dotted name, like ./.studio)."""
    parts = Path(given).parts
    for i in range(1, len(parts) + 1):
        here = str(Path(*parts[:i]).resolve())
        if here == root or here.startswith(root.rstrip(os.sep) + os.sep):
            return next((p for p in parts[i:] if _decoded(p).startswith(".")), None)
    return None


def _refuse_hidden(path: str, root: str, what: str) -> None:
    hidden = _hidden_below(path, root)
    if hidden is not None:
        raise Forbidden(f"{what} {path} has a hidden component {hidden!r}; refused (secrets such as "
                        ".ssh and .env live there)", "move the data to a folder without a leading '.'")


# A Hugging Face hub id ("gpt2", "org/model"): no leading '/', '.' or '~', at most one '/'.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")


def check_model_location(name: str, settings: StudioSettings, admin: bool, what: str, *,
                         hub_ids: bool = True, fix: str | None = None) -> str:
    """What a caller may name over HTTP as a model, tokenizer or adapter folder: a folder under
    ``$STUDIO_HOME/models`` (its path, or with ``hub_ids`` its folder name) or in the artifact store
    (where registered versions live), or with ``hub_ids`` a hub id that names no local path; an
    admin also a folder or URL under ``STUDIO_DATA_ROOTS``. Any other server path is 403 before
    anything looks at it, so the answer says nothing of whether it exists. Returns what to load:
    a resolved path, a URL or the hub id."""
    name = check_path_syntax(name, what)
    models = str(settings.models_dir.resolve())
    store = settings.artifacts
    store_root = store.rstrip("/") if _is_url(store) else str(Path(store).resolve())
    if _is_url(name):
        if _is_url(store) and name.startswith(store_root + "/"):
            _refuse_hidden(name, store_root, what)
            return guard_url(name, settings, what=what)
        if admin:
            return check_allowed(name, settings, what)
    elif os.path.isabs(name.removeprefix("file://")):
        local = str(Path(name.removeprefix("file://")).resolve())
        for root in [models] + ([] if _is_url(store) else [store_root]):
            if local.startswith(root + os.sep):
                _refuse_hidden(local, root, what)
                return local
        if admin:
            return check_allowed(name, settings, what)
    elif hub_ids and HUB_ID.fullmatch(name) and ".." not in name:
        local = str((settings.models_dir / name).resolve())
        if local.startswith(models + os.sep) and os.path.isdir(local):
            _refuse_hidden(local, models, what)
            return local
        if not os.path.exists(name):  # else a relative path in the server's working directory
            return name
    raise Forbidden(f"{what} {name!r} names a server path outside {models} and the artifact store",
                    fix or ("name a model under $STUDIO_HOME/models (its folder name, or "
                            "${STUDIO_HOME}/models/NAME) or a hub id such as 'gpt2'"
                            + ("" if admin else "; an admin key may also name folders under STUDIO_DATA_ROOTS")))


def check_tokenizer(tokenizer: str, settings: StudioSettings, admin: bool) -> str:
    """What a caller may name as a tokenizer: a model folder (``check_model_location``)."""
    return check_model_location(tokenizer, settings, admin, "tokenizer")


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

    def full(p: str) -> str:
        # http(s) paths keep their scheme inside fsspec; object-store paths lose it.
        return fs.unstrip_protocol(p) if remote else p

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
