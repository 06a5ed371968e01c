"""True file types: what the bytes are, whatever the name and Content-Type claim.

libmagic answers from content. Around it sit the judgements the policy needs: is it
an executable or script wherever it sits, does the name or declared type contradict
the content (an ``.exe`` renamed ``.pdf``), is it macro-enabled Office. A libmagic
handle is not thread-safe and costs about a millisecond to open, so each thread keeps
its own.
"""

from __future__ import annotations

import posixpath
import threading

import magic

# libmagic reads a prefix; OOXML detection needs the first zip entries, which sit early.
SNIFF_BYTES = 256 << 10

_local = threading.local()


def _magic() -> magic.Magic:
    handle: magic.Magic | None = getattr(_local, "magic", None)
    if handle is None:
        handle = magic.Magic(mime=True)
        _local.magic = handle
    return handle


def sniff(data: bytes) -> str:
    """The MIME type libmagic reports for ``data`` (``application/octet-stream`` if unsure)."""
    if not data:
        return "application/x-empty"
    if data.startswith(b"%PDF-"):
        # libmagic's own answer for this signature at offset 0, and nothing it tests
        # ranks above it; asking costs 0.08 ms for a small report's PDF.
        return "application/pdf"
    try:
        found = _magic().from_buffer(data[:SNIFF_BYTES])
    except (magic.MagicException, ValueError, OSError):
        found = ""
    found = str(found).split(";")[0].strip().lower() or "application/octet-stream"
    if found == "application/octet-stream":
        return by_signature(data) or found
    return found


# Formats the inspector opens, told by their leading bytes where libmagic is unsure (a
# truncated 7z, a RAR or OLE file whose first sector is damaged, DER-encoded CMS, which
# libmagic does not know, a TNEF stream).
_SIGNATURES = (
    (b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (b"Rar!\x1a\x07", "application/vnd.rar"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "application/x-ole-storage"),
    (b"{\\rtf", "text/rtf"),
    (b"\x78\x9f\x3e\x22", "application/vnd.ms-tnef"),
)
# ContentInfo: SEQUENCE, then the OID 1.2.840.113549.1.7.x (PKCS #7 / CMS content types).
_CMS_OID = b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07"


def by_signature(data: bytes) -> str | None:
    """The type of a format the inspector reads, from its signature bytes alone."""
    for prefix, found in _SIGNATURES:
        if data.startswith(prefix):
            return found
    if data[:1] == b"\x30" and _CMS_OID in data[2 : 8 + len(_CMS_OID)]:
        return "application/pkcs7-mime"
    return None


# Binary formats whose signature is plain ASCII: text that starts like one of them is
# left to libmagic (``MZ``/``ZM``: DOS and Windows executables; ``PK``: zip and every
# format built on it; ``#!``: scripts; ``%PDF``/``%!``: PDF and PostScript).
_MAGIC_ASCII_PREFIXES = (b"MZ", b"ZM", b"PK", b"#!", b"%PDF", b"%!", b"{\\rtf")
# The control bytes no text body holds (TAB, LF, FF and CR are text).
_CONTROL_BYTES = bytes([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F])


def _has_control(data: bytes, step: int = 64 << 10) -> bool:
    """Deleting the control bytes changes a slice's length only if it held any: a copy
    at memory speed, where a character-class search tests every byte. Slice by slice,
    so a large body is never copied whole."""
    for start in range(0, len(data), step):
        piece = data[start : start + step]
        if len(piece.translate(None, _CONTROL_BYTES)) != len(piece):
            return True
    return False


def text_body_type(data: bytes, declared: str) -> str | None:
    """The type of a message body that is plainly text, without libmagic; None when
    libmagic must decide.

    libmagic spends about 0.5 ms per KB of text running its text tests (source code,
    scripts, markup) to name a more precise text/* type. For a top-level text body
    that name matters to nothing: a body is not a file to the policy's attachment
    conditions, and a body is flagged executable only for a binary type, which valid
    UTF-8 without control characters and without an ASCII-signed binary format at its
    start cannot be. So such a body keeps the type it declares; anything else (8-bit
    bytes that are not UTF-8, control characters, a signature) goes to libmagic.
    """
    if declared not in ("text/plain", "text/html") or not data:
        return None
    if data.startswith(_MAGIC_ASCII_PREFIXES):
        return None
    if _has_control(data):
        return None
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return declared


def extension(filename: str | None) -> str:
    """Lower-case extension without the dot (``tar.gz`` kept whole), '' when there is none."""
    if not filename:
        return ""
    base = posixpath.basename(filename.replace("\\", "/")).strip().rstrip(".").lower()
    if "." not in base:
        return ""
    stem, ext = base.rsplit(".", 1)
    if ext in ("gz", "bz2", "xz") and stem.endswith(".tar"):
        return "tar." + ext
    return ext


EXECUTABLE_TYPES = frozenset(
    {
        "application/x-dosexec",
        "application/x-msdownload",
        "application/vnd.microsoft.portable-executable",
        "application/x-executable",
        "application/x-sharedlib",
        "application/x-pie-executable",
        "application/x-mach-binary",
        "application/x-mach-o-executable",
        "application/x-msi",
        "application/x-ms-shortcut",
        "application/x-iso9660-image",
        "application/x-ms-installer",
        "application/x-shellscript",
        "text/x-shellscript",
        "text/x-msdos-batch",
        "application/x-bat",
        "application/javascript",
        "text/javascript",
        "application/hta",
        "application/x-ms-wim",
        "application/x-vhd",
        "application/x-virtualbox-vhd",
        "application/java-archive",
        "text/x-vbscript",
        "application/x-powershell",
    }
)

EXECUTABLE_EXTENSIONS = frozenset(
    {
        "exe",
        "dll",
        "scr",
        "com",
        "pif",
        "cpl",
        "msi",
        "msp",
        "msc",
        "lnk",
        "js",
        "jse",
        "vbs",
        "vbe",
        "wsf",
        "wsh",
        "ws",
        "ps1",
        "psm1",
        "bat",
        "cmd",
        "hta",
        "iso",
        "img",
        "vhd",
        "vhdx",
        "jar",
        "sh",
        "reg",
        "inf",
        "scf",
        "appx",
        "msix",
        "gadget",
        "application",
        "apk",
        "elf",
        "sys",
        "drv",
        "ocx",
        "dmg",
        "app",
        "url",
        "chm",
        "xll",
        "wll",
    }
)

MACRO_EXTENSIONS = frozenset(
    {"docm", "dotm", "xlsm", "xltm", "xlam", "pptm", "potm", "ppsm", "ppam", "sldm"}
)

ARCHIVE_TYPES = frozenset(
    {
        "application/zip",
        "application/x-zip-compressed",
        "application/x-tar",
        "application/gzip",
        "application/x-gzip",
        "application/x-bzip2",
        "application/x-xz",
        "application/x-7z-compressed",
        "application/x-rar",
        "application/vnd.rar",
        "application/x-rar-compressed",
        "application/x-lzip",
        "application/zstd",
        "application/x-cab",
        "application/vnd.ms-cab-compressed",
        "application/x-lzh-compressed",
        "application/x-arj",
        "application/x-ace-compressed",
    }
)

# Kinds: coarse families that content, names and declared types are compared in.
_TYPE_KIND = {
    "application/pdf": "pdf",
    "application/zip": "zip",
    "application/x-zip-compressed": "zip",
    "application/msword": "ole",
    "application/vnd.ms-excel": "ole",
    "application/vnd.ms-powerpoint": "ole",
    "application/x-ole-storage": "ole",
    "application/cdfv2": "ole",
    "application/vnd.ms-outlook": "ole",
    "application/vnd.ms-office": "ole",
    "application/x-msi": "exe",
    "application/encrypted": "ole",
    "application/rtf": "rtf",
    "text/rtf": "rtf",
    "application/gzip": "gzip",
    "application/x-gzip": "gzip",
    "application/x-tar": "tar",
    "application/x-7z-compressed": "7z",
    "application/x-rar": "rar",
    "application/vnd.rar": "rar",
    "application/x-rar-compressed": "rar",
    "application/x-bzip2": "bzip2",
    "application/x-xz": "xz",
    "application/vnd.ms-tnef": "tnef",
    "application/ms-tnef": "tnef",
    "application/pkcs7-mime": "cms",
    "application/x-pkcs7-mime": "cms",
    "application/pkcs7-signature": "cms",
    "application/x-pkcs7-signature": "cms",
    "message/rfc822": "message",
}

_EXT_KIND = {
    "pdf": {"pdf"},
    "doc": {"ole", "rtf", "text"},
    "dot": {"ole"},
    "xls": {"ole", "text"},
    "xlt": {"ole"},
    "ppt": {"ole"},
    "pps": {"ole"},
    "msg": {"ole"},
    "docx": {"ooxml", "ole"},
    "docm": {"ooxml", "ole"},
    "dotx": {"ooxml"},
    "dotm": {"ooxml"},
    "xlsx": {"ooxml", "ole"},
    "xlsm": {"ooxml", "ole"},
    "xltx": {"ooxml"},
    "xltm": {"ooxml"},
    "xlsb": {"ooxml", "ole"},
    "pptx": {"ooxml", "ole"},
    "pptm": {"ooxml", "ole"},
    "ppsx": {"ooxml"},
    "potx": {"ooxml"},
    "odt": {"odf"},
    "ods": {"odf"},
    "odp": {"odf"},
    "odg": {"odf"},
    "zip": {"zip", "ooxml", "odf"},
    "gz": {"gzip"},
    "tgz": {"gzip"},
    "tar.gz": {"gzip"},
    "tar": {"tar"},
    "7z": {"7z"},
    "rar": {"rar"},
    "bz2": {"bzip2"},
    "tar.bz2": {"bzip2"},
    "xz": {"xz"},
    "tar.xz": {"xz"},
    "jpg": {"image"},
    "jpeg": {"image"},
    "png": {"image"},
    "gif": {"image"},
    "bmp": {"image"},
    "tif": {"image"},
    "tiff": {"image"},
    "webp": {"image"},
    "heic": {"image"},
    "txt": {"text"},
    "csv": {"text"},
    "log": {"text"},
    "md": {"text"},
    "xml": {"text"},
    "htm": {"text"},
    "html": {"text"},
    "json": {"text"},
    "eml": {"message", "text"},
    "rtf": {"rtf", "text"},
    "ics": {"text"},
    "vcf": {"text"},
    "exe": {"exe"},
    "dll": {"exe"},
    "scr": {"exe"},
    "msi": {"exe", "ole"},
    "com": {"exe", "text"},
    "mp3": {"audio"},
    "wav": {"audio"},
    "mp4": {"video"},
    "mov": {"video"},
    "dat": set(),  # winmail.dat and friends: no claim
    # S/MIME: DER, or the same base64-encoded once more by the sending tool
    "p7m": {"cms", "text"},
    "p7s": {"cms", "text"},
    "p7c": {"cms", "text"},
}

_DECLARED_KIND = {
    "application/pdf": {"pdf"},
    "application/zip": {"zip", "ooxml", "odf"},
    "application/x-zip-compressed": {"zip", "ooxml", "odf"},
    # Word and Excel open HTML and text saved under their names: "Save as .doc" and
    # the "export to Excel" of many web applications produce exactly that.
    "application/msword": {"ole", "rtf", "ooxml", "text"},
    "application/vnd.ms-excel": {"ole", "ooxml", "text"},
    "application/vnd.ms-powerpoint": {"ole", "ooxml"},
    "image/jpeg": {"image"},
    "image/png": {"image"},
    "image/gif": {"image"},
    "image/bmp": {"image"},
    "image/tiff": {"image"},
    "image/webp": {"image"},
    "application/gzip": {"gzip"},
    "application/x-gzip": {"gzip"},
    "application/x-tar": {"tar"},
    "application/x-7z-compressed": {"7z"},
    "application/x-rar-compressed": {"rar"},
    "application/vnd.rar": {"rar"},
    "application/x-rar": {"rar"},
    "application/pkcs7-mime": {"cms", "text"},
    "application/x-pkcs7-mime": {"cms", "text"},
    "application/rtf": {"rtf", "text"},
    "text/rtf": {"rtf", "text"},
}


def kind(true_type: str) -> str:
    """A coarse family of a libmagic type, so names and declared types can be compared."""
    if true_type in _TYPE_KIND:
        return _TYPE_KIND[true_type]
    if true_type.startswith("application/vnd.openxmlformats-officedocument") or true_type in (
        "application/vnd.ms-word.document.macroenabled.12",
        "application/vnd.ms-excel.sheet.macroenabled.12",
        "application/vnd.ms-powerpoint.presentation.macroenabled.12",
    ):
        return "ooxml"
    if true_type.startswith("application/vnd.oasis.opendocument"):
        return "odf"
    if true_type in EXECUTABLE_TYPES and not true_type.startswith("text/"):
        return "exe"
    major = true_type.split("/", 1)[0]
    if major in ("image", "audio", "video", "text"):
        return major
    if true_type in ("application/json", "application/xml", "application/csv"):
        return "text"
    return "other"


def is_executable(true_type: str, ext: str) -> bool:
    """PE, ELF, Mach-O, MSI, LNK, scripts and disk images, by content or by name."""
    return true_type in EXECUTABLE_TYPES or ext in EXECUTABLE_EXTENSIONS


def is_archive(true_type: str) -> bool:
    return true_type in ARCHIVE_TYPES


def mismatch(true_type: str, ext: str, declared: str) -> bool:
    """Does the content contradict the file name or the declared Content-Type?

    Only definite contradictions count: an unknown extension, a generic declared type
    (``application/octet-stream``) or a content type libmagic is unsure of claims
    nothing. Executable content under any non-executable name always contradicts.
    """
    true_kind = kind(true_type)
    if true_kind == "other" or true_type in ("application/octet-stream", "application/x-empty"):
        return False
    if true_kind == "exe" and ext and ext not in EXECUTABLE_EXTENSIONS:
        return True
    expected = _EXT_KIND.get(ext)
    if (
        expected
        and true_kind not in expected
        and not (true_kind == "zip" and expected & {"ooxml", "odf"})
        and not (true_kind == "message" and "text" in expected)
    ):
        return True
    declared_kinds = _DECLARED_KIND.get(declared)
    if declared_kinds and true_kind not in declared_kinds:
        return not (true_kind == "zip" and declared_kinds & {"ooxml", "odf"})
    return False
