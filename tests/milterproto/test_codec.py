"""The wire format without sockets: framing, parsers, encoders, message assembly."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from milter.message import Message, stuff, unstuff
from milter.milterproto import codec
from milter.milterproto.assembly import DotStuffer, MessageBuilder, header_bytes
from milter.milterproto.codec import (
    EncodeError,
    FramingError,
    MalformedPacket,
    MilterProtocolError,
    Packet,
    PacketDecoder,
)
from milter.milterproto.types import Macros


def pkt(command: str, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + command.encode() + data


# Framing ----------------------------------------------------------------------


def test_encode_counts_the_command_byte() -> None:
    assert codec.encode(codec.SMFIR_CONTINUE) == b"\0\0\0\x01c"
    assert codec.encode(codec.SMFIC_HELO, b"x\0") == b"\0\0\0\x03Hx\0"


def test_decoder_returns_whole_packets_only() -> None:
    d = PacketDecoder()
    stream = pkt("H", b"mx.example\0") + pkt("N") + pkt("B", b"body\r\n")
    assert d.feed(stream[:3]) == []
    assert d.feed(stream[3:10]) == []
    got = d.feed(stream[10:])
    assert got == [
        Packet(ord("H"), b"mx.example\0"),
        Packet(ord("N"), b""),
        Packet(ord("B"), b"body\r\n"),
    ]
    assert d.pending == 0


def test_decoder_fed_byte_by_byte() -> None:
    stream = pkt("O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF)) + pkt("Q")
    d = PacketDecoder()
    got: list[Packet] = []
    for i in range(len(stream)):
        got += d.feed(stream[i : i + 1])
    assert [p.command for p in got] == [ord("O"), ord("Q")]
    assert codec.parse_optneg(got[0].data) == codec.OptNeg(6, 0x1FF, 0x1FFFFF)


def test_zero_length_is_an_error() -> None:
    with pytest.raises(FramingError):
        PacketDecoder().feed(b"\0\0\0\0Q")


def test_oversized_length_fails_before_the_data_arrives() -> None:
    d = PacketDecoder(max_packet=100)
    d.feed(pkt("B", b"x" * 99))  # exactly at the limit: 1 + 99
    with pytest.raises(FramingError):
        d.feed(struct.pack(">I", 101))


def test_garbage_is_a_framing_error() -> None:
    with pytest.raises(FramingError):
        PacketDecoder().feed(b"EHLO example.com\r\n")


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=12), st.integers(1, 300))
def test_decoder_fuzz_raises_only_protocol_errors(chunks: list[bytes], limit: int) -> None:
    d = PacketDecoder(max_packet=limit)
    try:
        for chunk in chunks:
            for packet in d.feed(chunk):
                assert 0 <= packet.command <= 255
                assert len(packet.data) < limit
    except MilterProtocolError:
        pass


_PARSERS = [
    codec.parse_optneg,
    codec.parse_connect,
    codec.parse_macro,
    codec.parse_helo,
    codec.parse_envelope,
    codec.parse_header,
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_PARSERS), st.binary(max_size=80))
def test_parsers_fuzz_raise_only_protocol_errors(parser: object, data: bytes) -> None:
    with contextlib.suppress(MilterProtocolError):
        parser(data)  # type: ignore[operator]


# Parsers ----------------------------------------------------------------------


def test_optneg_short_is_malformed() -> None:
    with pytest.raises(MalformedPacket):
        codec.parse_optneg(b"\0\0\0\x06\0\0")


def test_connect_inet() -> None:
    data = b"client.example\x004" + struct.pack(">H", 40001) + b"192.0.2.7\0"
    assert codec.parse_connect(data) == codec.Connect("client.example", "4", 40001, "192.0.2.7")


def test_connect_inet6_unix_and_unknown() -> None:
    v6 = b"[2001:db8::1]\x006" + struct.pack(">H", 25) + b"2001:db8::1\0"
    assert codec.parse_connect(v6).address == "2001:db8::1"
    local = b"localhost\x00L\0\0/run/x.sock\0"
    assert codec.parse_connect(local) == codec.Connect("localhost", "L", 0, "/run/x.sock")
    assert codec.parse_connect(b"unknown\0U") == codec.Connect("unknown", "U", 0, "")


@pytest.mark.parametrize(
    "data",
    [b"no-nul", b"host\0", b"host\x004\x00", b"host\x00X\0\0a\0", b"host\x004\0\x19addr"],
)
def test_connect_malformed(data: bytes) -> None:
    with pytest.raises(MalformedPacket):
        codec.parse_connect(data)


def test_macro_braced_and_plain_names() -> None:
    stage, macros = codec.parse_macro(b"M{auth_authen}\0budi\0i\0ABC123\0{mail_addr}\0a@b\0")
    assert stage == "M"
    assert macros == {"auth_authen": "budi", "i": "ABC123", "mail_addr": "a@b"}
    wrapped = Macros(macros)
    assert wrapped["{auth_authen}"] == wrapped["auth_authen"] == "budi"
    assert wrapped.get("{i}") == "ABC123"
    assert "{mail_addr}" in wrapped
    assert wrapped.get("{nope}", "-") == "-"
    with pytest.raises(KeyError):
        wrapped["{nope}"]


def test_macro_empty_list_and_malformed() -> None:
    assert codec.parse_macro(b"C") == ("C", {})
    with pytest.raises(MalformedPacket):
        codec.parse_macro(b"")
    with pytest.raises(MalformedPacket):
        codec.parse_macro(b"Mi\0")
    with pytest.raises(MalformedPacket):
        codec.parse_macro(b"Mi\0x")


def test_envelope_strips_brackets_and_keeps_args() -> None:
    data = b"<budi@jakarta.go.id>\0SIZE=123\0SMTPUTF8\0"
    assert codec.parse_envelope(data) == ("budi@jakarta.go.id", ["SIZE=123", "SMTPUTF8"])
    assert codec.parse_envelope(b"<>\0") == ("", [])
    with pytest.raises(MalformedPacket):
        codec.parse_envelope(b"")


def test_header_and_helo() -> None:
    assert codec.parse_header(b"Subject\0 Halo\n\tdunia\0") == (b"Subject", b" Halo\n\tdunia")
    assert codec.parse_helo(b"mx.example\0") == "mx.example"
    with pytest.raises(MalformedPacket):
        codec.parse_header(b"Subject\0")
    with pytest.raises(MalformedPacket):
        codec.parse_header(b"\0value\0")


def test_eight_bit_strings_round_trip() -> None:
    raw = b"pengirim@contoh.id\xff"
    address, _ = codec.parse_envelope(b"<" + raw + b">\0")
    assert address.encode("utf-8", "surrogateescape") == raw


# Encoders ---------------------------------------------------------------------


def test_optneg_reply_with_macro_lists() -> None:
    packet = codec.optneg_reply(
        6, 0x1BF, 0x1FF000, {codec.SMFIM_CONNECT: "j _", codec.SMFIM_EOM: "i"}
    )
    assert packet[4] == codec.SMFIC_OPTNEG
    assert packet[5:17] == struct.pack(">III", 6, 0x1BF, 0x1FF000)
    assert packet[17:] == b"\0\0\0\0j _\0\0\0\0\x05i\0"


def test_replycode_single_and_multi_line() -> None:
    assert codec.reply_text(550, "5.7.1", "Ditolak / Rejected") == "550 5.7.1 Ditolak / Rejected"
    assert (
        codec.reply_text(550, "5.7.1", "baris satu\nbaris dua")
        == "550-5.7.1 baris satu\r\n550 5.7.1 baris dua"
    )
    assert codec.reply_text(451, "", "100% sure") == "451 100%% sure"
    assert codec.replycode(451, "4.3.0", "x") == codec.encode(ord("y"), b"451 4.3.0 x\0")


@pytest.mark.parametrize(
    ("code", "status"), [(250, ""), (550, "4.7.1"), (451, "5.0.0"), (550, "x")]
)
def test_replycode_refuses_what_postfix_would_refuse(code: int, status: str) -> None:
    with pytest.raises(EncodeError):
        codec.reply_text(code, status, "text")


def test_header_requests() -> None:
    assert codec.add_header("X-Label", "RAHASIA") == codec.encode(ord("h"), b"X-Label\0RAHASIA\0")
    assert codec.add_header("X-F", "a\r\n\tb") == codec.encode(ord("h"), b"X-F\0a\n\tb\0")
    assert codec.insert_header(0, "X-A", "v") == codec.encode(ord("i"), b"\0\0\0\0X-A\0v\0")
    assert codec.change_header("Subject", 1, "") == codec.encode(ord("m"), b"\0\0\0\x01Subject\0\0")
    with pytest.raises(EncodeError):
        codec.change_header("Subject", 0, "x")
    with pytest.raises(EncodeError):
        codec.add_header("Bad Name", "x")
    with pytest.raises(EncodeError):
        codec.add_header("X-Nul", "a\0b")


def test_recipient_requests_use_angle_brackets() -> None:
    assert codec.del_rcpt("a@b.id") == codec.encode(ord("-"), b"<a@b.id>\0")
    assert codec.add_rcpt("<a@b.id>") == codec.encode(ord("+"), b"<a@b.id>\0")
    assert codec.add_rcpt_par("a@b.id", ["NOTIFY=NEVER"]) == codec.encode(
        ord("2"), b"<a@b.id>\0NOTIFY=NEVER\0"
    )


def test_replace_body_chunks() -> None:
    body = b"x" * (codec.MAX_BODY_CHUNK * 2 + 10)
    packets = list(codec.replace_body(body))
    assert [len(p) - 5 for p in packets] == [codec.MAX_BODY_CHUNK, codec.MAX_BODY_CHUNK, 10]
    assert all(p[4] == ord("b") for p in packets)
    assert b"".join(p[5:] for p in packets) == body
    assert list(codec.replace_body(b"")) == [codec.encode(ord("b"))]


# Message assembly -----------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"a", b"..", b"\r\n.", b"x.y"]), max_size=30
    ),
    st.lists(st.integers(1, 7), min_size=1, max_size=30),
)
def test_dot_stuffer_matches_whole_message_stuffing(parts: list[bytes], cuts: list[int]) -> None:
    content = b"".join(parts).replace(b"\r\n", b"\n").replace(b"\r", b"").replace(b"\n", b"\r\n")
    stuffer = DotStuffer()
    out = b""
    pos = 0
    for size in cuts * (len(content) // max(1, sum(cuts)) + 1):
        if pos >= len(content):
            break
        out += stuffer.feed(content[pos : pos + size])
        pos += size
    out += stuffer.feed(content[pos:])
    assert out == stuff(content)
    assert unstuff(out) == content


def test_dot_stuffer_makes_bare_lf_crlf_before_stuffing() -> None:
    s = DotStuffer()
    assert s.feed(b"a\n.b\r") + s.feed(b"\n.c\n") == b"a\r\n..b\r\n..c\r\n"


def test_header_bytes_restore_space_and_crlf() -> None:
    assert (
        header_bytes(b"Subject", b"Halo\n\tdunia", leadspc=False) == b"Subject: Halo\r\n\tdunia\r\n"
    )
    assert header_bytes(b"Subject", b"\tHalo", leadspc=True) == b"Subject:\tHalo\r\n"


def test_builder_spools_and_limits(tmp_path: object) -> None:
    b = MessageBuilder(threshold=10, spool_dir=str(tmp_path), max_size=1000)
    b.header(b"Subject", b" x", leadspc=True)
    b.body(b".dot\r\n" * 5)
    msg: Message = b.finish()
    assert msg.path is not None
    assert msg.content() == b"Subject: x\r\n\r\n" + b".dot\r\n" * 5
    msg.close()
    small = MessageBuilder(threshold=10, spool_dir=str(tmp_path), max_size=20)
    small.body(b"y" * 30)
    assert small.over and small.size == 32
    small.discard()
