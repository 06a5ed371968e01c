"""OCR benchmark: time and accuracy per scanned A4 page, for the engine the inspector uses
and the one it was compared with.

Run: ``.venv/bin/python -m bench.bench_ocr [--pages 20] [--compare-pages 5] [--gateway 200]``.
Pages are letters drawn with Pillow in DejaVu Sans at 200 and 300 dpi (A4), with scanner
noise, a slight skew and JPEG compression, a classification at the top and bottom centre
and, on every other page, a stamp rotated 3 degrees. Each page is decoded and prepared as
the inspector does (gray, scaled to ``ocr.TARGET_DPI``) and read whole by each engine,
one process, one thread (``OMP_THREAD_LIMIT=1``). Printed per engine and resolution:
median and p99 seconds per page, pages whose top marking ``SANGAT RAHASIA`` was read,
and character accuracy (1 - edit distance / length of the drawn text). ``--gateway N``
also sends N messages through ``milter serve`` (20 sessions) with 0% and then 10%
scanned letters among 66 KB report messages, once per ``--ocr-processes`` value (``0``:
scans read in the inspection processes, as before OCR had processes of its own)::

    ocr processes  scanned  all msg/s  reports msg/s  report p50  report p99  scan p50
    0                   0%       38.5           38.5      379 ms     1862 ms
    0                  10%        5.3            6.6     1665 ms     6391 ms     3.6 s
    1                   0%       60.9           60.9      245 ms      844 ms
    1                  10%        6.3           36.4      422 ms     1323 ms     2.8 s

Measured on the 2-core build machine while other work kept it busy (load average 6-8,
so absolute times are about three times those of an idle core; the ratios hold)::

    engine      dpi  median s  p99 s  label found  char accuracy
    tesseract   200      5.34   9.01       20/20           1.000
    tesseract   300      5.27   7.73       20/20           1.000
    rapidocr    200     59.27  93.34        0/5            0.882
    rapidocr    300     35.88 127.53        0/5            0.881

(A first run on a quieter machine, 2 pages each: tesseract 1.6 s / 2.0 s per page,
rapidocr 18.7 s / 13.8 s.)

Why tesseract (through tesserocr, which keeps one loaded engine per inspection process
instead of a ``tesseract`` process per region): it reads a page 7 to 10 times faster
than rapidocr's PP-OCRv4 models on this CPU, and more accurately: rapidocr's
Chinese/English recogniser drops the spaces between capitals ("SANGATRAHASIA",
"PEMERINTAHPROVINSIDKIJAKARTA"), so the marking a letter carries is not read as one,
where tesseract with its Indonesian model reads the drawn text almost exactly.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu")
A4_INCHES = (8.27, 11.69)

_WORDS = [
    "dengan",
    "hormat",
    "sehubungan",
    "surat",
    "kepala",
    "dinas",
    "perihal",
    "pelaksanaan",
    "kegiatan",
    "anggaran",
    "tahun",
    "provinsi",
    "daerah",
    "khusus",
    "ibukota",
    "jakarta",
    "bersama",
    "ini",
    "kami",
    "sampaikan",
    "laporan",
    "hasil",
    "rapat",
    "koordinasi",
    "pengadaan",
    "barang",
    "jasa",
    "pemerintah",
    "daerah",
    "untuk",
    "ditindaklanjuti",
    "sesuai",
    "ketentuan",
    "peraturan",
    "perundangan",
    "yang",
    "berlaku",
    "demikian",
    "atas",
    "perhatian",
    "dan",
    "kerja",
    "sama",
    "bapak",
    "ibu",
    "kami",
    "ucapkan",
    "terima",
    "kasih",
    "data",
    "pegawai",
    "wilayah",
    "kota",
    "administrasi",
]


@lru_cache(maxsize=8)
def font(size: int, *, bold: bool = False) -> ImageFont.FreeTypeFont:
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    for folder in FONT_DIRS:
        path = Path(folder) / name
        if path.exists():
            return ImageFont.truetype(str(path), size)
    raise FileNotFoundError(f"{name} not found (Debian: fonts-dejavu-core)")


def body_lines(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(7, 10))]
        words[0] = words[0].capitalize()
        lines.append(" ".join(words))
    return lines


def _centred(draw: ImageDraw.ImageDraw, y: int, text: str, f: ImageFont.FreeTypeFont, w: int):
    width = draw.textlength(text, font=f)
    draw.text(((w - width) / 2, y), text, font=f, fill=0)


def stamp(text: str, px: int, angle: float) -> Image.Image:
    """A rubber stamp: the word in a box, rotated, on a transparent ground (mode LA)."""
    f = font(px, bold=True)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    width = int(probe.textlength(text, font=f))
    pad = px // 2
    box = Image.new("LA", (width + 2 * pad, px + 2 * pad + px // 3), (0, 0))
    d = ImageDraw.Draw(box)
    d.rectangle((2, 2, box.width - 3, box.height - 3), outline=(40, 255), width=max(3, px // 12))
    d.text((pad, pad), text, font=f, fill=(40, 255))
    return box.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)


def letter(
    *,
    dpi: int = 300,
    top: str | None = "SANGAT RAHASIA",
    bottom: str | None = None,
    stamp_text: str | None = None,
    stamp_angle: float = 3.0,
    lines: int = 16,
    seed: int = 1,
    noise: bool = True,
    skew: float = 0.4,
) -> tuple[Image.Image, str]:
    """A scanned A4 letter (grayscale) and the text drawn on it, in reading order.

    ``top`` and ``bottom`` are the classification at the top and bottom centre, as Perka
    ANRI 17/2011 places it; ``stamp_text`` is a boxed stamp rotated ``stamp_angle``
    degrees in the middle of the page.
    """
    w, h = int(A4_INCHES[0] * dpi), int(A4_INCHES[1] * dpi)
    page = Image.new("L", (w, h), 250)
    d = ImageDraw.Draw(page)
    pt = dpi / 72
    drawn: list[str] = []
    marking = font(int(14 * pt), bold=True)
    text_font = font(int(11 * pt))
    head_font = font(int(12 * pt), bold=True)
    if top:
        _centred(d, int(0.35 * dpi), top, marking, w)
        drawn.append(top)
    y = int(1.0 * dpi)
    for head in ("PEMERINTAH PROVINSI DKI JAKARTA", "DINAS KOMUNIKASI DAN INFORMATIKA"):
        _centred(d, y, head, head_font, w)
        drawn.append(head)
        y += int(18 * pt)
    y += int(14 * pt)
    for line in body_lines(lines, seed):
        d.text((int(1.0 * dpi), y), line, font=text_font, fill=20)
        drawn.append(line)
        y += int(17 * pt)
    if stamp_text:
        s = stamp(stamp_text, int(20 * pt), stamp_angle)
        # Beside the signature, below the body, where a letter's stamp goes.
        at = (int(w * 0.5), max(y + int(0.3 * dpi), int(h * 0.62)))
        page.paste(s.getchannel(0), at, s.getchannel(1))
        drawn.append(stamp_text)
    if bottom:
        _centred(d, h - int(0.6 * dpi), bottom, marking, w)
        drawn.append(bottom)
    if skew:
        page = page.rotate(skew, resample=Image.Resampling.BICUBIC, fillcolor=250)
    if noise:
        grain = Image.effect_noise((w, h), 18).filter(ImageFilter.GaussianBlur(0.6))
        page = Image.blend(page, grain, 0.12)
    page.info["dpi"] = (dpi, dpi)
    return page, "\n".join(drawn)


def save(image: Image.Image, fmt: str, dpi: int) -> bytes:
    """``image`` as JPEG, PNG or TIFF G4 (bilevel fax) bytes at ``dpi``."""
    out = io.BytesIO()
    if fmt == "jpeg":
        image.convert("L").save(out, "JPEG", quality=75, dpi=(dpi, dpi))
    elif fmt == "png":
        image.save(out, "PNG", dpi=(dpi, dpi))
    elif fmt == "g4":
        image.convert("L").point(lambda v: 255 if v > 150 else 0).convert("1").save(
            out, "TIFF", compression="group4", dpi=(dpi, dpi)
        )
    else:
        raise ValueError(fmt)
    return out.getvalue()


def photo(width: int = 1600, height: int = 1200, seed: int = 3) -> bytes:
    """A holiday-photo-like JPEG: sky, sea and sand gradients, blurred shapes, no text."""
    rng = random.Random(seed)
    img = Image.new("RGB", (width, height))
    d = ImageDraw.Draw(img)
    for y in range(height):
        t = y / height
        if t < 0.45:
            colour = (int(90 + 100 * t), int(150 + 120 * t), 235)
        elif t < 0.7:
            colour = (20, int(90 + 60 * t), int(140 + 40 * t))
        else:
            colour = (int(200 + 30 * t), int(180 + 20 * t), 140)
        d.line((0, y, width, y), fill=colour)
    for _ in range(25):
        x, y, r = rng.randrange(width), rng.randrange(height), rng.randint(20, 160)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        d.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(6))
    grain = Image.effect_noise((width, height), 25).convert("RGB")
    img = Image.blend(img, grain, 0.08)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


# --- measuring --------------------------------------------------------------------


def char_accuracy(truth: str, read: str) -> float:
    """1 - Levenshtein distance / len(truth), on whitespace-normalised, case-folded text."""
    a = " ".join(truth.split()).casefold()
    b = " ".join(read.split()).casefold()
    if not a:
        return 1.0 if not b else 0.0
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return max(0.0, 1 - prev[-1] / len(a))


def _reader(name: str) -> Callable[[Image.Image], str] | None:
    """The engine as the inspector loads it; None when it is not installed (rapidocr is
    in the ``bench`` extra only)."""
    from milter.inspect import ocr

    try:
        found = ocr.engine(name, ("ind", "eng"))
    except ImportError:
        return None
    return lambda img: "\n".join(t for t, _ in found.read(img))


def scanned_message(seed: int) -> bytes:
    """A mail with one scanned letter (JPEG, 200 dpi, no marking: it is delivered)."""
    from email.mime.image import MIMEImage
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    page, _ = letter(dpi=200, top=None, seed=seed)
    msg = MIMEMultipart()
    msg["From"], msg["To"], msg["Subject"] = "pengirim@example.com", "penerima@example.org", "Surat"
    msg.attach(MIMEText("Terlampir hasil pindaian surat.", "plain", "utf-8"))
    image = MIMEImage(save(page, "jpeg", 200), "jpeg")
    image.add_header("Content-Disposition", "attachment", filename=f"surat-{seed}.jpg")
    msg.attach(image)
    return msg.as_bytes()


@dataclass
class _Tally:
    """What the sessions of one mix measured (``list.append`` is atomic: the sessions'
    threads share the lists)."""

    latencies: list[float] = field(default_factory=list)  # report messages
    scan_latencies: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)  # when each report was answered
    failures: list[str] = field(default_factory=list)


def _send(port: int, jobs: list[tuple[bytes, bool]], tally: _Tally) -> None:
    """One SMTP session sending ``jobs``; the latency of each message is kept, and when
    each unscanned one was answered."""
    import smtplib

    with smtplib.SMTP("127.0.0.1", port, timeout=300) as client:
        for data, scanned in jobs:
            started = time.perf_counter()
            try:
                client.sendmail("pengirim@example.com", ["penerima@example.org"], data)
            except smtplib.SMTPException as exc:
                tally.failures.append(str(exc))
            now = time.perf_counter()
            if scanned:
                tally.scan_latencies.append(now - started)
            else:
                tally.latencies.append(now - started)
                tally.done.append(now)


def _start_gateway(sink_port: int, ocr_processes: int) -> tuple[subprocess.Popen[bytes], int]:
    """``milter serve`` with the shipped policy, given a minute to start on a busy machine
    (and stopped again if it does not)."""
    from bench.run import OUT, ROOT, stop
    from tests.conftest import free_port, wait_port

    port = free_port()
    var = OUT / "var-ocr"
    shutil.rmtree(var, ignore_errors=True)
    var.mkdir(parents=True)
    cfg = OUT / "gateway-ocr.yaml"
    cfg.write_text(
        f'listen: ["127.0.0.1:{port}"]\nhostname: bench.jakarta.go.id\n'
        f'clients: ["127.0.0.0/8"]\nupstream: smtp://127.0.0.1:{sink_port}\n'
        f"max_connections_per_client: 1000\nspool_dir: {var}/tmp\n"
        f"quarantine: {{database: 'sqlite:///{var}/q.sqlite3', spool: '{var}/spool'}}\n"
        f"policy: {ROOT}/policies/se-79-2019.yaml\n"
        f"routes: {{sanapati: 'smtp://127.0.0.1:{sink_port}'}}\n"
        f"inspect: {{ocr: {{processes: {ocr_processes}}}}}\n"
    )
    with open(OUT / "gateway-ocr.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "milter", "-c", str(cfg), "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        wait_port(port, timeout=60, proc=proc)
    except BaseException:
        stop(proc)
        raise
    return proc, port


def gateway_throughput(count: int, sessions: int, ocr_processes: int = 1) -> None:
    """Messages/s through ``milter serve`` (shipped policy, full inspection, 1 worker with
    2 inspection processes and ``ocr_processes`` OCR processes) with 0% and 10% scanned
    messages among report messages. The question is what scans cost everyone else:
    printed are all messages/s (until the last scan is read), the report messages/s
    (until the last report is answered), the reports' latency and the scans' latency."""
    import threading

    from bench.messages import report_message
    from bench.run import start_sink, stop

    report = report_message()
    scans = [scanned_message(seed) for seed in range(4)]
    sink, sink_port = start_sink()
    try:
        gateway, port = _start_gateway(sink_port, ocr_processes)
    except BaseException:
        stop(sink)
        raise
    try:
        for share in (0, 10):
            mix = [
                (scans[i % len(scans)], True)
                if share and i % (100 // share) == 0
                else (report, False)
                for i in range(count)
            ]
            tally = _Tally()
            threads = [
                threading.Thread(target=_send, args=(port, mix[i::sessions], tally))
                for i in range(sessions)
            ]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - started
            latencies = sorted(tally.latencies)
            scan_latencies = tally.scan_latencies
            reports = len(latencies) / (max(tally.done) - started)
            scan_column = (
                f"scan p50 {statistics.median(scan_latencies):5.1f} s  "
                f"max {max(scan_latencies):5.1f} s"
                if scan_latencies
                else f"{'':26s}"
            )
            print(
                f"gateway  ocr processes {ocr_processes}  {share:3d}% scanned  "
                f"{count / elapsed:6.1f} msg/s  reports {reports:6.1f} msg/s  report latency "
                f"p50 {statistics.median(latencies) * 1000:6.0f} ms  "
                f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:6.0f} ms  "
                f"{scan_column}  failures {len(tally.failures)}"
            )
    finally:
        stop(gateway)
        stop(sink)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pages", type=int, default=20, help="pages per engine and resolution")
    parser.add_argument(
        "--compare-pages", type=int, default=5, help="pages for rapidocr (about 15 s each)"
    )
    parser.add_argument("--engines", default="tesseract,rapidocr")
    parser.add_argument(
        "--gateway",
        type=int,
        default=0,
        metavar="N",
        help="also N messages through milter serve, with 0%% and 10%% scanned",
    )
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument(
        "--ocr-processes",
        default="1",
        metavar="N[,N...]",
        help="inspect.ocr.processes of the gateway; 0 reads scans in the inspection processes",
    )
    args = parser.parse_args()
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    from milter.inspect import ocr

    print(
        f"{'engine':10s} {'dpi':>4s} {'median s':>9s} {'p99 s':>6s} {'label found':>12s} "
        f"{'char accuracy':>14s}"
    )
    for name in filter(None, args.engines.split(",")):
        reader = _reader(name)
        if reader is None:
            print(f"{name:10s} not installed (pip install '.[bench]'), skipped")
            continue
        read = reader
        count = args.pages if name == "tesseract" else args.compare_pages
        for dpi in (200, 300):
            times: list[float] = []
            found = 0
            accuracy: list[float] = []
            for i in range(count):
                page, truth = letter(
                    dpi=dpi, seed=i, stamp_text="RAHASIA" if i % 2 else None, bottom="RAHASIA"
                )
                decoded = Image.open(io.BytesIO(save(page, "jpeg", dpi)))
                prepared = ocr.prepare(decoded, dpi=dpi)
                start = time.perf_counter()
                text = read(prepared)
                times.append(time.perf_counter() - start)
                found += "SANGAT RAHASIA" in text.upper()
                accuracy.append(char_accuracy(truth, text))
            times.sort()
            p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
            print(
                f"{name:10s} {dpi:4d} {statistics.median(times):9.2f} {p99:6.2f} "
                f"{found:>8d}/{count:<3d} {statistics.mean(accuracy):14.3f}"
            )

    if args.gateway:
        for n in args.ocr_processes.split(","):
            gateway_throughput(args.gateway, args.sessions, int(n))


if __name__ == "__main__":
    main()
