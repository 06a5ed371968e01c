"""SMTP replies as data: code, enhanced status code (RFC 3463) and text.

Defined once here so every front-end says the same thing the same way; texts are
Bahasa Indonesia first, English second, for the people who read bounces.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    """An SMTP reply: code, enhanced status (may be empty) and text."""

    code: int
    text: str
    status: str = ""

    def line(self) -> str:
        """The reply as one line for the wire (multi-line texts are joined)."""
        text = " ".join(self.text.split())
        return f"{self.code} {self.status + ' ' if self.status else ''}{text}"


NOT_PERMITTED = Reply(
    554, "Akses relay ditolak / Relay access denied: client not permitted", "5.7.1"
)
TOO_MANY_CONNECTIONS = Reply(
    421, "Terlalu banyak koneksi / Too many connections from your address, try again later", "4.7.0"
)
TOO_MANY_RECIPIENTS = Reply(452, "Terlalu banyak penerima / Too many recipients", "4.5.3")
TOO_BIG = Reply(552, "Pesan terlalu besar / Message size exceeds fixed limit", "5.3.4")
LINE_TOO_LONG = Reply(500, "Baris terlalu panjang / Line too long", "5.5.2")
SMUGGLING = Reply(
    554,
    "Urutan akhir baris tidak sah / Bare CR or LF before a dot line is "
    "not allowed (SMTP smuggling)",
    "5.6.0",
)
SHUTTING_DOWN = Reply(
    421, "Layanan sedang dihentikan / Service shutting down, try again later", "4.3.2"
)
TEMP_FAILURE = Reply(
    451, "Kesalahan sementara, coba lagi / Temporary local problem, try again later", "4.3.0"
)
BAD_ADDRESS = Reply(501, "Alamat tidak sah / Bad address syntax", "5.1.3")
