"""Record the inspector's findings for many messages, or compare them with a record.

A refactoring of the inspector must not change a single finding; the golden tests
cover a handful of messages, this covers the whole shared corpus, the benchmark
messages, the golden fixtures and a set of synthetic messages aimed at the fast
paths (text bodies that look like scripts or markup, PDF text operators). The record
holds everything a policy can read: ``to_dict``, the decoded headers and the text.

Run from the repository root::

    .venv/bin/python -m tests.inspect.findings_snapshot write /tmp/findings-before.json
    .venv/bin/python -m tests.inspect.findings_snapshot compare /tmp/findings-before.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import zlib
from collections.abc import Iterator
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

from bench.messages import big_message, jpeg, pdf, pdf_file, report_message, small_message
from milter.inspect import inspect_message
from tests.corpus import corpus_root

FIXTURES = Path(__file__).parent / "fixtures"

# Bodies whose libmagic type is something other than text/plain, or nearly so.
TEXT_BODIES: tuple[bytes, ...] = (
    b"#!/bin/sh\necho hello\nrm -rf /tmp/x\n",
    b"#!/usr/bin/env python3\nimport os\nprint(os.getcwd())\n",
    b"#! /bin/bash\nset -e\n",
    b"#!/usr/bin/perl\nprint 'x';\n",
    b"MZ this is not really an executable but starts like one\n",
    b"\x7fELF not an elf but starts like one\n",
    b"%PDF-1.4\n1 0 obj\n<< >>\nendobj\n",
    b"PK\x03\x04 not a zip\n",
    b"<?php echo 'hi'; ?>\n",
    b"<html><head><script>alert(1)</script></head><body>x</body></html>\n",
    b"<!DOCTYPE html>\n<html><body><p>Halo</p></body></html>\n",
    b"<?xml version='1.0'?>\n<root><a>1</a></root>\n",
    b"<svg xmlns='http://www.w3.org/2000/svg'><script>x()</script></svg>\n",
    b'{"a": 1, "b": [1, 2, 3]}\n',
    b"a,b,c\n1,2,3\n4,5,6\n7,8,9\n",
    b"#include <stdio.h>\nint main(void) { return 0; }\n",
    b"import java.util.List;\npublic class A { }\n",
    b"Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\nFrom: a@b\nSubject: x\n\nbody\n",
    b"From: a@b\nTo: c@d\nSubject: forwarded\n\nhello\n",
    b"From a@b Mon Jan  1 00:00:00 2024\nFrom: a@b\n\nmbox\n",
    b"@echo off\r\ndel /q c:\\temp\\*\r\n",
    b'Set objShell = CreateObject("WScript.Shell")\r\nobjShell.Run "cmd"\r\n',
    b"function f() { var x = 1; return x; }\nf();\n",
    b"powershell -nop -w hidden -enc SQBFAFgA\n",
    b"{\\rtf1\\ansi hello}\n",
    b"%!PS-Adobe-3.0\n%%EOF\n",
    b"\\documentclass{article}\n\\begin{document}x\\end{document}\n",
    b"diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n",
    b"-----BEGIN PGP MESSAGE-----\nhQEMA\n-----END PGP MESSAGE-----\n",
    b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    b"BEGIN:VCALENDAR\nVERSION:2.0\nEND:VCALENDAR\n",
    b"BEGIN:VCARD\nVERSION:3.0\nEND:VCARD\n",
    b"x",
    b"ab",
    b"\n",
    b"   \n\t\n",
    b"plain ascii text with a NUL\x00 inside\n",
    b"caf\xc3\xa9 au lait, UTF-8 text\n",
    b"caf\xe9 au lait, Latin-1 text\n",
    b"\xef\xbb\xbfUTF-8 with a BOM\n",
    b"\xff\xfeU\x00T\x00F\x00-\x001\x006\x00",
    b"\x1b[31mred\x1b[0m escape codes\n",
    b"form\x0cfeed and \x08backspace\n",
    b"\x80\x81\x82 bytes that are not text anywhere\n",
    b"Laporan kegiatan\n" * 800,
    b"<p>Laporan kegiatan</p>\n" * 800 + b"<script>x()</script>\n",
    b"Laporan kegiatan\n" * 600 + b"#!/bin/sh\n",
    b"line\n" * 2000 + b"\x00\x01\x02",
    b"GIF89a not a gif\n",
    b"\x89PNG not a png\n",
    b"Rar! not a rar\n",
    b"7z\xbc\xaf\x27\x1c not 7z\n",
    b"<HTML>\n<BODY>upper case html</BODY></HTML>\n",
    b"<!-- comment -->\n<html></html>\n",
    b"<head><title>t</title></head>\n",
    b"<a href='x'>link</a> only an anchor\n",
)
CHARSETS = ("us-ascii", "utf-8", "iso-8859-1", "windows-1252", "bogus-charset", None)


def _text_message(body: bytes, subtype: str, charset: str | None) -> bytes:
    ctype = f"text/{subtype}" + (f"; charset={charset}" if charset else "")
    head = (
        "From: a@example.com\nTo: b@example.com\nSubject: synthetic\n"
        f"MIME-Version: 1.0\nContent-Type: {ctype}\nContent-Transfer-Encoding: base64\n\n"
    )
    import base64

    return head.encode() + base64.encodebytes(body)


def _pdf_with_stream(ops: bytes, font: bytes) -> bytes:
    content = zlib.compress(ops)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(content)
        + content
        + b"\nendstream",
        font,
    ]
    return pdf_file(objects, header=b"%PDF-1.4\n")


_HELVETICA = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
PDF_STREAMS: tuple[bytes, ...] = (
    b"BT /F1 12 Tf 72 700 Td (Hello world) Tj ET",
    b"BT /F1 12 Tf 72 700 Td [(He) -120 (llo) -300 (world)] TJ ET",
    b"BT /F1 12 Tf 72 700 Td (line one) Tj T* (line two) Tj 0 -14 Td (three) Tj ET",
    b"BT /F1 12 Tf 14 TL 72 700 Td (first) Tj (second) ' 1 2 (third) \" ET",
    b"BT /F1 12 Tf (esc \\(paren\\) \\\\ back \\101\\102 \\n nl \\\r\ncont) Tj ET",
    b"BT /F1 12 Tf (nested (paren) inside) Tj (deep (a (b) c) d) Tj ET",
    b"BT /F1 12 Tf <48656c6c6f> Tj <4 8 6 5 6> Tj <FEFF00480069> Tj ET",
    b"BT /F1 12 Tf (\xfe\xff\x00H\x00i) Tj (\xef\xbb\xbfutf8 \xc3\xa9) Tj ET",
    b"(outside text) Tj BT (inside) Tj ET (after) Tj",
    b"BT (no operator after) ET BT (pending) (two) Tj ET",
    b"BT [(a) -251 (b) -250 (c) -1000.5 (d) .5 (e) -.9e3 (f)] TJ ET",
    b"BT [-300 (lead)] TJ [(x)-300(y)]TJ ET",
    b"BT/F1 12 Tf(tight)Tj(tight2)Tj[(arr)]TJ ET",
    b"BT 1 0 0 1 72 700 Tm (matrix) Tj 1 0 0 1 72 600 Tm (two) Tj TD (x) Tj ET",
    b"BT (a) Tj ETX (b) Tj BTX (c) Tj ET",
    b"q BT (unterminated (paren) Tj ET Q",
    b"BT (ok) Tj ET BT <4142 Tj ET",
    b"BT (x) Tj % comment (not text) Tj\n(y) Tj ET",
    b"BT /F1 12 Tf (1.5) Tj 12.5 -3 Td (-400) Tj ET",
    b"BT [(a)-300.(b)-.300(c)-3.5.5(d)] TJ ET",
    b"BT [(a)--300(b)] TJ ET",
    b"BT /Name(Tj)Tj /TJ(x)Tj ET",
    b"BT (a) Tj\x00(b) Tj\tET",
    b"BT (Tj) Tj (ET) Tj (BT) Tj ET",
    b"BT " + b"(word) Tj T* " * 400 + b"ET",
    b"BT (a\\\\) Tj (b\\)) Tj (c\\\\\\)) Tj ET",
    b"BT (octal \\0 \\00 \\000 \\777 \\8 \\9) Tj ET",
    b"BT (\\\ncontinued\\\rline) Tj ET",
    b"BT <> Tj () Tj <F> Tj <zz41> Tj ET",
    b"BT [(a) 300 (b) -251.0 (c) - 300 (d)] TJ ET",
    b"BT (x) Tj ET ET BT BT (y) Tj ET",
    b"BT [(a) [(b)] TJ] (c) Tj ET",
)


def synthetic() -> Iterator[tuple[str, bytes]]:
    """Messages aimed at the fast paths: text bodies in many charsets, PDF operators."""
    for i, body in enumerate(TEXT_BODIES):
        for charset in CHARSETS:
            for subtype in ("plain", "html"):
                yield (
                    f"synthetic/text-{i}-{subtype}-{charset}",
                    _text_message(body, subtype, charset),
                )
    for i, ops in enumerate(PDF_STREAMS):
        msg = MIMEMultipart("mixed", boundary="==snapshot-boundary==")
        msg["Subject"] = "pdf"
        msg.attach(MIMEText("see attachment", "plain", "us-ascii"))
        part = MIMEApplication(_pdf_with_stream(ops, _HELVETICA), "pdf")
        part.add_header("Content-Disposition", "attachment", filename=f"s{i}.pdf")
        msg.attach(part)
        yield f"synthetic/pdf-{i}", msg.as_bytes()
    lines = [f"baris {n} (dengan kurung) dan \\ garis miring" for n in range(60)]
    msg = MIMEMultipart("mixed", boundary="==snapshot-boundary==")
    part = MIMEApplication(pdf(lines, image=jpeg(64, 64), image_size=(64, 64)), "pdf")
    part.add_header("Content-Disposition", "attachment", filename="lines.pdf")
    msg.attach(part)
    yield "synthetic/pdf-lines", msg.as_bytes()


def messages() -> Iterator[tuple[str, bytes]]:
    """Every message the record covers, by a stable name."""
    real = corpus_root() / "real"
    for path in sorted(p for p in real.rglob("*") if p.is_file()):
        yield f"corpus/{path.relative_to(real)}", path.read_bytes()
    for path in sorted(FIXTURES.glob("*.eml")):
        yield f"fixtures/{path.name}", path.read_bytes()
    random.seed(0)  # MIME boundaries come from ``random``: the same messages every run
    yield "bench/report", report_message()
    yield "bench/small", small_message()
    yield "bench/big", big_message()
    yield from synthetic()


def record(data: bytes) -> dict[str, Any]:
    findings = inspect_message(data)
    out = findings.to_dict()
    out["headers"] = [list(h) for h in findings.headers]
    out["text"] = findings.text
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=("write", "compare"))
    parser.add_argument("path", type=Path)
    args = parser.parse_args()
    got = {name: record(data) for name, data in messages()}
    if args.mode == "write":
        args.path.write_text(json.dumps(got, ensure_ascii=False, sort_keys=True))
        print(f"wrote {len(got)} messages to {args.path}")
        return 0
    want = json.loads(args.path.read_text())
    got = json.loads(json.dumps(got, ensure_ascii=False, sort_keys=True))
    differ = sorted(name for name in want.keys() | got.keys() if want.get(name) != got.get(name))
    for name in differ[:20]:
        print(f"DIFFERS {name}")
        old, new = want.get(name) or {}, got.get(name) or {}
        for key in sorted(old.keys() | new.keys()):
            if old.get(key) != new.get(key):
                print(f"  {key}:\n    before {str(old.get(key))[:400]}")
                print(f"    after  {str(new.get(key))[:400]}")
    print(f"compared {len(want)} recorded / {len(got)} now, {len(differ)} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
