"""How a rewritten copy becomes milter header edits (frontend.header_changes)."""

from __future__ import annotations

from milter.milterproto.frontend import header_changes, parse_headers
from milter.milterproto.types import MilterResult


def edits(old: list[tuple[str, str]], new: list[tuple[str, str]]) -> MilterResult:
    result = MilterResult("accept")
    header_changes(old, new, result)
    return result


def test_a_signature_in_front_is_inserted_at_the_top() -> None:
    old = [("From", "a@jakarta.go.id"), ("Subject", "Rapat")]
    r = edits(old, [("DKIM-Signature", "v=1; d=jakarta.go.id"), *old])
    assert r.insert_headers == [(0, "DKIM-Signature", "v=1; d=jakarta.go.id")]
    assert r.change_headers == [] and r.add_headers == []


def test_a_changed_first_header_is_changed_in_place() -> None:
    old = [("Subject", "Rapat"), ("From", "a@jakarta.go.id")]
    new = [("DKIM-Signature", "sig"), ("Subject", "[INTERNAL] Rapat"), ("From", "a@jakarta.go.id")]
    r = edits(old, new)
    assert r.change_headers == [("Subject", 1, "[INTERNAL] Rapat")]
    assert r.insert_headers == [(0, "DKIM-Signature", "sig")]


def test_removed_namesakes_are_deleted_highest_index_first_and_additions_appended() -> None:
    old = [("X-Mailer", "a"), ("Subject", "s"), ("x-mailer", "b"), ("X-Mailer", "c")]
    new = [("Subject", "s"), ("X-Diperiksa", "ya")]
    r = edits(old, new)
    assert r.change_headers == [("X-Mailer", 3, ""), ("X-Mailer", 2, ""), ("X-Mailer", 1, "")]
    assert r.add_headers == [("X-Diperiksa", "ya")] and r.insert_headers == []


def test_folded_values_keep_their_line_breaks() -> None:
    block = b"Subject: panjang\r\n sekali\r\nFrom: a@jakarta.go.id"
    assert parse_headers(block) == [("Subject", "panjang\r\n sekali"), ("From", "a@jakarta.go.id")]
