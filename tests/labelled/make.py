"""Write the labelled fixtures and their index (``index.tsv``).

Run from the repository root (LibreOffice makes the ``soffice`` fixtures; without it
they are left as they are)::

    .venv/bin/python -m tests.labelled.make

Each fixture is a message as an agency's mail client would send it, in one of the
categories of the recall figures: letter conventions, documents, subjects, prose traps
(ordinary mail that must not count), NIK (bulk personal data or look-alikes). The
``scans`` category is for scanned letters; the index lists whatever is in it.
Columns of the index: file, category, expected level (``-`` for none), draft (yes/no),
bulk personal data (yes/no: the shipped bulk rule must hold it), and a note.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from milter.inspect.detectors import valid_nik
from tests.labelled.build import docx, eml, odt, pdf, xlsx

HERE = Path(__file__).resolve().parent
INDEX = HERE / "index.tsv"
CATEGORIES = ("letters", "documents", "subjects", "prose", "nik", "scans")

Row = tuple[str, str, str, str, str, str]


def niks(n: int, seed: int) -> list[str]:
    """Valid NIKs of DKI Jakarta residents: real regency/district codes, birth dates
    (women with day + 40), serials."""
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        day = rng.randint(1, 28) + rng.choice((0, 40))
        nik = (
            f"31{rng.choice((71, 72, 73, 74, 75, 1)):02d}{rng.randint(1, 10):02d}"
            f"{day:02d}{rng.randint(1, 12):02d}{rng.randint(50, 99):02d}"
            f"{rng.randint(1, 9999):04d}"
        )
        if valid_nik(nik):
            out.add(nik)
    return sorted(out)


def lookalikes(n: int, seed: int) -> list[str]:
    """Random 16-digit references (order ids, virtual accounts) that happen to have the
    structure of a NIK: the worst case for a structure-only validator."""
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        number = str(rng.randrange(10**15, 10**16))
        if valid_nik(number):
            out.add(number)
    return sorted(out)


LETTER_HEAD = (
    "PEMERINTAH PROVINSI DAERAH KHUSUS IBUKOTA JAKARTA\n"
    "DINAS KOMUNIKASI, INFORMATIKA DAN STATISTIK\n"
    "Jalan Medan Merdeka Selatan 8-9, Jakarta\n\n"
)
LETTER_BODY = (
    "\nYth. Kepala Badan Kepegawaian Daerah\ndi Jakarta\n\n"
    "Sehubungan dengan rencana mutasi pegawai, bersama ini kami sampaikan daftar usulan.\n"
    "Demikian disampaikan, atas perhatian Saudara diucapkan terima kasih.\n\n"
    "Kepala Dinas\n"
)


def letter(sifat_line: str) -> str:
    return (
        LETTER_HEAD
        + "Nomor    : 800/1234/-1.862\n"
        + sifat_line
        + "\nLampiran : 1 (satu) berkas\nHal      : Usulan mutasi pegawai\n"
        + LETTER_BODY
    )


def letter_table(sifat: str) -> list[list[str]]:
    return [
        ["Nomor", ":", "800/1234/-1.862"],
        ["Sifat", ":", sifat],
        ["Lampiran", ":", "1 (satu) berkas"],
        ["Hal", ":", "Usulan mutasi pegawai"],
    ]


PROSE = [
    "Sehubungan dengan kegiatan evaluasi kinerja triwulan III, bersama ini kami "
    "sampaikan hasil pemantauan pelaksanaan program di lingkungan dinas.",
    "Data capaian disusun per bidang dan per wilayah kota administrasi.",
    "Demikian laporan ini disampaikan untuk menjadi bahan tindak lanjut.",
]


def fixtures() -> list[tuple[str, str, str, str, str, str, bytes]]:
    """(file, category, level, draft, bulk, note, message bytes) of every fixture."""
    out: list[tuple[str, str, str, str, str, str, bytes]] = []

    def add(
        category: str, name: str, level: str, data: bytes, note: str, *, draft: str = "no"
    ) -> None:
        out.append((f"{category}/{name}.eml", category, level, draft, "no", note, data))

    # --- letter conventions ----------------------------------------------------------
    add(
        "letters",
        "body-sifat-rahasia",
        "RAHASIA",
        eml("Usulan mutasi pegawai", letter("Sifat    : Rahasia")),
        "letter header Sifat in the mail body",
    )
    add(
        "letters",
        "body-sifat-lowercase-spacing",
        "SANGAT_RAHASIA",
        eml("Usulan mutasi", letter("sifat:sangat rahasia")),
        "any case, no spacing around the colon",
    )
    add(
        "letters",
        "body-sifat-segera-rahasia",
        "RAHASIA",
        eml("Usulan mutasi", letter("Sifat : Segera / Rahasia")),
        "urgency and classification in one Sifat",
    )
    add(
        "letters",
        "body-sifat-sangat-segera",
        "-",
        eml("Usulan mutasi", letter("Sifat : Sangat Segera")),
        "urgency only: not a classification",
    )
    add(
        "letters",
        "body-sifat-biasa",
        "-",
        eml("Usulan mutasi", letter("Sifat : Biasa")),
        "Biasa as urgency",
    )
    add(
        "letters",
        "body-klasifikasi",
        "TERBATAS",
        eml("Nota dinas", "Klasifikasi : TERBATAS\n\n" + "\n".join(PROSE)),
        "Klasifikasi line",
    )
    add(
        "letters",
        "docx-table-sifat",
        "RAHASIA",
        eml("Surat", attachments=[("surat.docx", docx(PROSE, table=letter_table("Rahasia")))]),
        "letter header in a Word table",
    )
    add(
        "letters",
        "odt-table-sifat",
        "TERBATAS",
        eml("Surat", attachments=[("surat.odt", odt(PROSE, table=letter_table("Terbatas")))]),
        "letter header in an ODF table",
    )
    add(
        "letters",
        "docx-header-titlecase",
        "RAHASIA",
        eml("Laporan", attachments=[("laporan.docx", docx(PROSE, header=["Rahasia"]))]),
        "title case alone on the page header",
    )
    add(
        "letters",
        "docx-footer-titlecase",
        "TERBATAS",
        eml("Laporan", attachments=[("laporan.docx", docx(PROSE, footer=["Terbatas"]))]),
        "title case alone on the page footer",
    )
    add(
        "letters",
        "docx-watermark",
        "RAHASIA",
        eml("Laporan", attachments=[("laporan.docx", docx(PROSE, watermark="RAHASIA"))]),
        "Word VML watermark",
    )
    add(
        "letters",
        "odt-watermark",
        "SANGAT_RAHASIA",
        eml("Laporan", attachments=[("laporan.odt", odt(PROSE, watermark="Sangat Rahasia"))]),
        "LibreOffice watermark shape",
    )
    add(
        "letters",
        "pdf-watermark",
        "RAHASIA",
        eml("Laporan", attachments=[("laporan.pdf", pdf([PROSE * 3], watermark="RAHASIA"))]),
        "PDF watermark text",
    )
    add(
        "letters",
        "pdf-page-header-titlecase",
        "TERBATAS",
        eml("Laporan", attachments=[("laporan.pdf", pdf([["Terbatas", *PROSE, "Halaman 1"]]))]),
        "title case on the first line of a page",
    )

    # --- documents -------------------------------------------------------------------
    long_text = PROSE * 12
    add(
        "documents",
        "docx-page3-marking",
        "RAHASIA",
        eml(
            "Laporan",
            attachments=[
                ("laporan.docx", docx(long_text, page_break_before=[*PROSE, "RAHASIA", *PROSE]))
            ],
        ),
        "marking in the middle of page 3",
    )
    add(
        "documents",
        "docx-textbox-stamp",
        "SANGAT_RAHASIA",
        eml("Nota", attachments=[("nota.docx", docx(PROSE, textbox=["SANGAT RAHASIA"]))]),
        "stamp box (text box)",
    )
    add(
        "documents",
        "xlsx-odd-header",
        "RAHASIA",
        eml(
            "Rekap",
            attachments=[
                (
                    "rekap.xlsx",
                    xlsx(
                        [["Bidang", "Realisasi"], ["Umum", 100]],
                        odd_header='&C&"Arial,Bold"RAHASIA',
                    ),
                )
            ],
        ),
        "xlsx page header &C code",
    )
    add(
        "documents",
        "xlsx-odd-footer",
        "TERBATAS",
        eml(
            "Rekap",
            attachments=[
                (
                    "rekap.xlsx",
                    xlsx([["Bidang", "Realisasi"], ["Umum", 100]], odd_footer="&LDinas&RTerbatas"),
                )
            ],
        ),
        "xlsx page footer, right section",
    )
    add(
        "documents",
        "xlsx-cell-shared",
        "RAHASIA",
        eml(
            "Rekap",
            attachments=[("rekap.xlsx", xlsx([["RAHASIA"], ["Bidang", "Anggaran"], ["Umum", 5]]))],
        ),
        "marking cell (shared string)",
    )
    add(
        "documents",
        "xlsx-cell-inline",
        "TERBATAS",
        eml(
            "Rekap",
            attachments=[
                (
                    "rekap.xlsx",
                    xlsx([["Bidang", "Anggaran"], ["Umum", 5], ["TERBATAS"]], inline=True),
                )
            ],
        ),
        "marking cell (inline string) at the bottom",
    )
    add(
        "documents",
        "docx-core-title",
        "RAHASIA",
        eml(
            "Rencana",
            attachments=[
                ("rencana.docx", docx(PROSE, core={"title": "RAHASIA - Rencana pengamanan"}))
            ],
        ),
        "docProps/core.xml title",
    )
    add(
        "documents",
        "docx-core-keywords",
        "RAHASIA",
        eml(
            "Anggaran",
            attachments=[("anggaran.docx", docx(PROSE, core={"keywords": "anggaran; Rahasia"}))],
        ),
        "docProps/core.xml keywords",
    )
    add(
        "documents",
        "pdf-title",
        "RAHASIA",
        eml(
            "Audit",
            attachments=[("audit.pdf", pdf([PROSE], info={"Title": "[RAHASIA] Laporan audit"}))],
        ),
        "PDF Title",
    )
    add(
        "documents",
        "pdf-subject",
        "TERBATAS",
        eml("Audit", attachments=[("audit.pdf", pdf([PROSE], info={"Subject": "Terbatas"}))]),
        "PDF Subject",
    )
    add(
        "documents",
        "pdf-page3",
        "RAHASIA",
        eml(
            "Laporan",
            attachments=[("laporan.pdf", pdf([PROSE, PROSE, [*PROSE, "RAHASIA", *PROSE]]))],
        ),
        "marking in the middle of PDF page 3",
    )
    drafts: list[tuple[str, str, bytes]] = [
        ("docx-tracked", "tracked changes", docx(PROSE, tracked=True)),
        ("docx-comments", "comments", docx(PROSE, comments=["Mohon angka diperiksa lagi."])),
        ("docx-watermark-konsep", "KONSEP watermark", docx(PROSE, watermark="KONSEP")),
        ("docx-header-draft", "Draft in the header", docx(PROSE, header=["Draft"])),
        ("docx-rancangan-line", "RANCANGAN line", docx(["RANCANGAN", *PROSE])),
        ("docx-status-draft", "contentStatus Draft", docx(PROSE, core={"status": "Draft"})),
        ("odt-tracked", "ODF tracked changes", odt(PROSE, tracked=True)),
    ]
    for name, note, data in drafts:
        ext = name.split("-", 1)[0]
        add(
            "documents",
            f"draft-{name}",
            "-",
            eml("Bahan", attachments=[(f"bahan.{ext}", data)]),
            note,
            draft="yes",
        )
    for name, subtypes in (
        ("highlight-note", ["Highlight", "Text"]),
        ("strikeout-caret", ["StrikeOut", "Caret"]),
    ):
        add(
            "documents",
            f"draft-pdf-{name}",
            "-",
            eml("Bahan", attachments=[("bahan.pdf", pdf([PROSE], annotations=subtypes))]),
            f"PDF review annotations {', '.join(subtypes)}",
            draft="yes",
        )
    add(
        "documents",
        "final-docx-rancangan-prose",
        "-",
        eml(
            "Peraturan",
            attachments=[
                (
                    "pergub.docx",
                    docx(["Rancangan peraturan gubernur ini telah ditetapkan.", *PROSE]),
                )
            ],
        ),
        "a final document mentioning a draft in prose",
    )
    add(
        "documents",
        "final-pdf-link-annotation",
        "-",
        eml("Peraturan", attachments=[("pergub.pdf", pdf([PROSE], annotations=["Link"]))]),
        "a link annotation is not a review",
    )

    # --- subjects --------------------------------------------------------------------
    subjects = [
        ("dash-after", "RAHASIA - Nota dinas rapat koordinasi", "RAHASIA"),
        ("dash-before", "Nota dinas - RAHASIA", "RAHASIA"),
        ("asterisks", "*RAHASIA* Laporan hasil audit", "RAHASIA"),
        ("external-tag", "RE: [EXTERNAL] [RAHASIA] Undangan rapat", "RAHASIA"),
        ("eksternal-first", "[EKSTERNAL] RE: [TERBATAS] Data pegawai", "TERBATAS"),
        ("titlecase-official", "Undangan Rapat (Rahasia)", "RAHASIA"),
        ("titlecase-bracket-official", "[Terbatas] Nota dinas pengadaan", "TERBATAS"),
        ("sangat-rahasia-colon", "SANGAT RAHASIA: rencana pengamanan", "SANGAT_RAHASIA"),
    ]
    for name, subject, level in subjects:
        add("subjects", name, level, eml(subject, "\n".join(PROSE)), subject)
    add(
        "subjects",
        "forwarded-original",
        "SANGAT_RAHASIA",
        eml(
            "Fwd: undangan",
            "Mohon ditindaklanjuti.\n\n---------- Forwarded message ---------\n"
            "From: Sekretariat <set@jakarta.go.id>\nDate: Rab, 1 Mei 2024 09.00\n"
            "Subject: [SANGAT RAHASIA] Rencana pengamanan\nTo: Kabid <kabid@jakarta.go.id>\n\n"
            + "\n".join(PROSE),
        ),
        "forwarded original's Subject line",
    )
    add(
        "subjects",
        "outlook-original",
        "RAHASIA",
        eml(
            "RE: data",
            "Baik, terlampir.\n\n-----Original Message-----\nFrom: Kabid\n"
            "Sent: Wednesday, May 1, 2024 9:00 AM\nTo: Budi\nSubject: RAHASIA: data pegawai\n\n"
            + "\n".join(PROSE),
        ),
        "Outlook original message header",
    )
    add(
        "subjects",
        "perihal-original",
        "TERBATAS",
        eml(
            "Tr: bahan rapat",
            "Diteruskan.\n\n> Dari: Sekretariat\n> Perihal: [TERBATAS] Bahan rapat pimpinan\n>\n"
            + "\n".join("> " + p for p in PROSE),
        ),
        "quoted Perihal line",
    )

    # --- prose traps -----------------------------------------------------------------
    shop_html = (
        "<html><body><h1>Flash Sale Akhir Tahun</h1><div class='card'><p>Sepatu Lari Pro</p>"
        "<span class='badge'>TERBATAS</span><p>Rp 299.000</p><p>Beli sekarang</p></div>"
        "<div class='card'><p>Tas Ransel</p><span class='badge'>TERBATAS</span>"
        "<p>Rp 199.000</p></div></body></html>"
    )
    traps: list[tuple[str, str, bytes]] = [
        (
            "rahasia-cara-hemat",
            "click-bait subject",
            eml("Rahasia: 7 Cara Hemat Belanja Bulanan", "Simak tipsnya."),
        ),
        (
            "terbatas-voucher",
            "voucher subject",
            eml("[Terbatas] Voucher Diskon 50% Akhir Tahun", "Gunakan kodenya."),
        ),
        (
            "terbatas-voucher-caps",
            "voucher subject in capitals",
            eml("[TERBATAS] Voucher Belanja", "Kode: HEMAT50"),
        ),
        (
            "kuota-terbatas",
            "training subject",
            eml("Pelatihan Data Science (Kuota Terbatas)", "Daftar segera."),
        ),
        (
            "shop-badge",
            "shop badge",
            eml(
                "Flash sale",
                "Flash Sale Akhir Tahun\nSepatu Lari Pro\nTERBATAS\nRp 299.000",
                html=shop_html,
            ),
        ),
        (
            "perseroan-terbatas",
            "company form",
            eml(
                "Akta pendirian",
                "Akta pendirian Perseroan Terbatas\nPT MAJU JAYA TERBATAS\nTelah disahkan.",
            ),
        ),
        (
            "pt-terbatas-subject",
            "company in subject",
            eml("PT Sinar Abadi Terbatas - Penawaran Kerja Sama", "Terlampir profil."),
        ),
        (
            "rahasia-sukses",
            "capitals in a sentence",
            eml("RAHASIA SUKSES BISNIS ONLINE", "Ikuti webinar kami."),
        ),
        (
            "resep-rahasia",
            "prose",
            eml("Resep rahasia keluarga", "Ini resep rahasia keluarga kami.\nBahan: tepung, gula."),
        ),
        (
            "bersifat-rahasia",
            "prose",
            eml("Info", "Informasi ini bersifat rahasia dan terbatas pada peserta."),
        ),
        (
            "rapat-terbatas",
            "cabinet meeting",
            eml("Undangan Rapat Terbatas Kabinet", "\n".join(PROSE)),
        ),
        ("tips-rahasia", "tail with click-bait", eml("Tips Hemat: Rahasia", "Baca selengkapnya.")),
        (
            "docx-prose-title",
            "document with prose title and heading",
            eml(
                "Artikel",
                attachments=[
                    (
                        "artikel.docx",
                        docx(
                            ["Rahasia Dapur Sehat", "Kuota terbatas untuk peserta.", *PROSE],
                            core={"title": "Rahasia: 7 Cara Hemat"},
                        ),
                    )
                ],
            ),
        ),
        (
            "xlsx-stock-list",
            "shop stock column",
            eml(
                "Daftar harga",
                attachments=[
                    (
                        "harga.xlsx",
                        xlsx(
                            [
                                ["Produk", "Harga", "Stok"],
                                ["Sepatu", 299000, "TERBATAS"],
                                ["Tas", 199000, "Tersedia"],
                            ]
                        ),
                    )
                ],
            ),
        ),
    ]
    for name, note, data in traps:
        add("prose", name, "-", data, note)

    # --- NIK -------------------------------------------------------------------------
    def nik_row(name: str, bulk: str, note: str, data: bytes) -> None:
        out.append((f"nik/{name}.eml", "nik", "-", "no", bulk, note, data))

    people = niks(300, 1)
    csv = "No,Nama,NIK,Kelurahan\n" + "".join(
        f"{i},Warga {i},{n},Gambir\n" for i, n in enumerate(people, 1)
    )
    nik_row(
        "csv-nik-column",
        "yes",
        "300 NIKs under a NIK column",
        eml("Data", attachments=[("data.csv", csv.encode())]),
    )
    refs = lookalikes(300, 2)
    vas = lookalikes(300, 3)
    orders = "order_id,virtual_account,amount\n" + "".join(
        f"{a},{b},{(i % 90 + 10) * 1000}\n" for i, (a, b) in enumerate(zip(refs, vas, strict=True))
    )
    nik_row(
        "csv-order-ids",
        "no",
        "300 order ids and VAs with NIK structure",
        eml("Rekap transaksi", attachments=[("transaksi.csv", orders.encode())]),
    )
    ident = "No. Identitas;Nama\n" + "".join(f"{n};Warga {i}\n" for i, n in enumerate(niks(40, 4)))
    nik_row(
        "csv-no-identitas",
        "yes",
        "No. Identitas column, semicolons",
        eml("Data", attachments=[("data.csv", ident.encode())]),
    )
    sheet = xlsx([["Nama", "NIK"], *[[f"Warga {i}", int(n)] for i, n in enumerate(niks(50, 5))]])
    nik_row(
        "xlsx-nik-numeric",
        "yes",
        "NIK column of numeric cells",
        eml("Data", attachments=[("data.xlsx", sheet)]),
    )
    refsheet = xlsx([["Referensi", "Jumlah"], *[[int(n), 5000] for n in lookalikes(50, 6)]])
    nik_row(
        "xlsx-references",
        "no",
        "reference numbers with NIK structure",
        eml("Rekap", attachments=[("rekap.xlsx", refsheet)]),
    )
    grouped = "Daftar penerima:\n" + "\n".join(
        f"{i}. NIK {n[:4]} {n[4:8]} {n[8:12]} {n[12:]}" for i, n in enumerate(niks(12, 7), 1)
    )
    nik_row("body-grouped", "yes", "NIKs in groups of four", eml("Penerima bantuan", grouped))
    dotted = "Daftar:\n" + "\n".join(
        f"- No. KTP {n[:4]}.{n[4:8]}.{n[8:12]}.{n[12:]}" for n in niks(12, 8)
    )
    nik_row("body-dotted", "yes", "dotted NIKs", eml("Data KTP", dotted))
    reference = "Transaksi:\n" + "\n".join(f"No. Referensi {n} berhasil" for n in lookalikes(12, 9))
    nik_row("body-references", "no", "references in prose", eml("Notifikasi", reference))
    nine = "\n".join(f"NIK {n}" for n in niks(9, 10))
    nik_row("body-nine", "no", "nine NIKs: under the threshold", eml("Data", nine))
    return out


def _soffice(src_name: str, content: str, fmt: str) -> bytes | None:
    """A document LibreOffice itself writes from an HTML letter, or None without it."""
    exe = shutil.which("soffice") or shutil.which("libreoffice")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / src_name
        src.write_text(content, encoding="utf-8")
        proc = subprocess.run(
            [
                exe,
                "--headless",
                f"-env:UserInstallation=file://{tmp}/profile",
                "--convert-to",
                fmt,
                "--outdir",
                tmp,
                str(src),
            ],
            capture_output=True,
            timeout=180,
            check=False,
        )
        target = src.with_suffix("." + fmt.split(":", 1)[0])
        if proc.returncode != 0 or not target.is_file():
            return None
        return target.read_bytes()


LETTER_HTML = """<html><body>
<p align="center"><b>PEMERINTAH PROVINSI DAERAH KHUSUS IBUKOTA JAKARTA</b></p>
<table>
<tr><td>Nomor</td><td>:</td><td>800/1234/-1.862</td></tr>
<tr><td>Sifat</td><td>:</td><td>Segera, Rahasia</td></tr>
<tr><td>Lampiran</td><td>:</td><td>1 (satu) berkas</td></tr>
<tr><td>Hal</td><td>:</td><td>Usulan mutasi pegawai</td></tr>
</table>
<p>Yth. Kepala Badan Kepegawaian Daerah di Jakarta</p>
<p>Sehubungan dengan rencana mutasi pegawai, bersama ini kami sampaikan daftar usulan.</p>
</body></html>
"""


def soffice_fixtures() -> list[tuple[str, str, str, str, str, str, bytes]]:
    out = []
    for fmt, ext in (("docx:MS Word 2007 XML", "docx"), ("pdf:writer_pdf_Export", "pdf")):
        data = _soffice("surat.html", LETTER_HTML, fmt)
        if data is not None:
            out.append(
                (
                    f"letters/soffice-{ext}.eml",
                    "letters",
                    "RAHASIA",
                    "no",
                    "no",
                    f"LibreOffice {ext} of a letter with Sifat: Segera, Rahasia in a table",
                    eml("Usulan mutasi", attachments=[(f"surat.{ext}", data)]),
                )
            )
    return out


def read_index() -> list[Row]:
    rows: list[Row] = []
    for line in INDEX.read_text(encoding="utf-8").splitlines()[1:]:
        if line.strip():
            f, c, level, draft, bulk, note = line.split("\t")
            rows.append((f, c, level, draft, bulk, note))
    return rows


def main(
    make_soffice: Callable[[], list[tuple[str, str, str, str, str, str, bytes]]] = soffice_fixtures,
) -> None:
    made = fixtures() + make_soffice()
    for category in CATEGORIES:
        (HERE / category).mkdir(exist_ok=True)
    lines = ["file\tcategory\tlevel\tdraft\tbulk\tnote"]
    for f, c, level, draft, bulk, note, data in made:
        (HERE / f).write_bytes(data)
        lines.append("\t".join((f, c, level, draft, bulk, note)))
    known = {row[0] for row in made}
    if INDEX.is_file():
        # Rows of other makers (scanned letters) are kept as they are.
        lines += ["\t".join(r) for r in read_index() if r[0] not in known]
    INDEX.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(made)} fixtures written, index {INDEX}")


if __name__ == "__main__":
    main()
