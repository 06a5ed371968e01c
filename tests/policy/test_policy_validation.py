"""``milter policy validate``: every error, each with its file, line and column."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from policy_fixtures import SHIPPED

from milter.policy.engine import Policy, PolicyError

BAD = """\
version: 1
domains:
  internal: [jakarta.go.id, "*.jakarta.go.id"]
  partners: ["@nosuchset", "bad domain!"]
classifications:
  BIASA: {aliases: [Biasa]}
  RAHASIA: {aliases: [Rahasia], guids: [not-a-guid]}
keywords:
  hoaks: [hoaks]
rules:
  - name: r1
    when:
      classification: {at_least: SECRET}
      recipient: {not_in: outside}
    then: [quarantine]
  - name: r2
    when:
      content: {keywords: nosuch, regex: "a(b"}
    then:
      - route: nowhere
  - name: r1
    colour: red
    when: {size: {min: lots}}
    then: [quarantine, reject]
  - name: r4
    mode: loud
    stop: "yes"
    then: [{add_header: {name: "Bad Header", value: "{level}"}}]
  - name: r5
    when: {attachment: {executable: maybe, extension: exe}, header: {regex: x}}
    then: [{notify: [boss]}, {frobnicate: 1}]
"""

BAD_ERRORS = [
    "4:14: domains.partners[0]: unknown set 'nosuchset'",
    "4:28: domains.partners[1]: not a domain or *.domain: 'bad domain!'",
    "7:41: classifications.RAHASIA.guids[0]: not a label GUID: 'not-a-guid'",
    "13:34: rules[0].when.classification.at_least: unknown level 'SECRET' (levels: BIASA, RAHASIA)",
    "14:27: rules[0].when.recipient.not_in: unknown set 'outside' (known: internal, partners)",
    "18:27: rules[1].when.content.keywords: unknown dictionary 'nosuch' (known: hoaks)",
    "18:42: rules[1].when.content.regex: bad regular expression: missing ), unterminated "
    "subpattern at position 1",
    "20:16: rules[1].then[0].route: unknown route 'nowhere' (routes in the gateway "
    "configuration: sanapati, upstream)",
    "21:11: rules[2].name: duplicate rule name 'r1' (also rules[0])",
    "22:5: rules[2].colour: unknown key (known keys: name, description, clause, when, "
    "unless, then, mode, stop, enabled, before)",
    "23:24: rules[2].when.size.min: expected a size such as 50MB, got 'lots'",
    "24:24: rules[2].then[1]: a rule takes one of deliver, reject, quarantine, route; "
    "it already has quarantine",
    "26:11: rules[3].mode: expected one of enforce, audit, test",
    "27:11: rules[3].stop: expected true or false",
    "28:32: rules[3].then[0].add_header.name: not a header name: 'Bad Header'",
    "28:53: rules[3].then[0].add_header.value: unknown placeholder {level} (known: "
    "{classification}, {clause}, {rule}, {sender}; write {{ for a brace)",
    "30:37: rules[4].when.attachment.executable: expected true or false",
    "30:69: rules[4].when.header: a header condition needs a name",
    "31:22: rules[4].then[0].notify[0]: expected sender, officers or a mail address, got 'boss'",
    "31:31: rules[4].then[1].frobnicate: unknown action 'frobnicate' (known: deliver, "
    "reject, quarantine, route, subject_prefix, add_header, remove_header, disclaimer, "
    "strip_attachments, bcc, notify)",
]


def test_every_error_with_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    with pytest.raises(PolicyError) as info:
        Policy.load([str(path)], routes=["sanapati"])
    assert [str(e) for e in info.value.errors] == [f"{path}:{e}" for e in BAD_ERRORS]
    assert str(info.value) == "\n".join(f"{path}:{e}" for e in BAD_ERRORS)


def test_validate_command_prints_errors_and_fails(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    config = tmp_path / "gateway.yaml"
    config.write_text("routes:\n  sanapati: smtp://127.0.0.1:10026\n")
    rc, out, _ = cli("-c", str(config), "policy", "validate", str(path))
    assert rc == 1
    assert out.splitlines() == [f"{path}:{e}" for e in BAD_ERRORS]


def test_without_routes_route_names_are_not_checked(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("rules:\n  - name: r\n    then: [{route: anywhere}]\n")
    assert Policy.load([str(path)]).rules[0].route == "anywhere"
    with pytest.raises(PolicyError) as info:
        Policy.load([str(path)], routes=[])
    assert [str(e) for e in info.value.errors] == [
        f"{path}:3:20: rules[0].then[0].route: unknown route 'anywhere' (routes in the "
        "gateway configuration: upstream)"
    ]


def test_validate_ok(cli: Callable[..., tuple[int, str, str]], tmp_path: Path) -> None:
    site = tmp_path / "local.yaml"
    site.write_text("domains:\n  internal: [pemda.example]\n")
    rc, out, _ = cli("policy", "validate", str(SHIPPED), str(site))
    assert rc == 0
    assert out.splitlines() == [f"{SHIPPED}: ok", f"{site}: ok"]


def test_yaml_syntax_error_and_errors_in_other_files_all_reported(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("rules:\n  - name: a\n    then: [quarantine\n")
    other = tmp_path / "other.yaml"
    other.write_text(
        "rules:\n  - name: b\n    when: {recipient: {in: nowhere}}\n    then: [deliver]\n"
    )
    rc, out, _ = cli("policy", "validate", str(broken), str(other))
    assert rc == 1
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{broken}:4:1: YAML syntax: ")
    assert lines[1] == (
        f"{other}:3:28: rules[0].when.recipient.in: unknown set 'nowhere' (known: none defined)"
    )


def test_missing_file_and_duplicate_yaml_key(tmp_path: Path) -> None:
    dup = tmp_path / "dup.yaml"
    dup.write_text("domains:\n  a: [x.example]\n  a: [y.example]\n")
    missing = tmp_path / "missing.yaml"
    with pytest.raises(PolicyError) as info:
        Policy.load([str(missing), str(dup)])
    msgs = [str(e) for e in info.value.errors]
    assert msgs[0].startswith(f"{missing}:1:1: cannot read")
    assert msgs[1] == f"{dup}:3:3: duplicate key 'a'"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "domains:\n  a: ['@b']\n  b: ['@a']\n",
            "3:7: domains.b[0]: set 'b' refers to itself through @a",
        ),
        ("rules: {}\n", "1:8: rules: expected a list of rules"),
        ("rules:\n  - then: [deliver]\n", "2:5: rules[0]: a rule needs a name"),
        ("rules:\n  - name: x\n", "2:5: rules[0]: a rule needs then: a list of actions"),
        (
            "rules:\n  - name: x\n    then: []\n",
            "3:11: rules[0].then: expected a non-empty list of actions",
        ),
        (
            "rules:\n  - name: x\n    when: {}\n    then: [deliver]\n",
            "3:11: rules[0].when: expected at least one condition",
        ),
        (
            "rules:\n  - name: x\n    when: {sender: {in: []}}\n    then: [deliver]\n",
            "3:25: rules[0].when.sender.in: expected a string or a non-empty list of strings",
        ),
        (
            "rules:\n  - name: x\n    when: {content: {detector: {name: ssn}}}\n"
            "    then: [deliver]\n",
            "3:39: rules[0].when.content.detector.name: unknown detector 'ssn'",
        ),
        (
            "rules:\n  - name: x\n    when: {content: {detector: {name: nik, min_count: 0}}}\n"
            "    then: [deliver]\n",
            "3:55: rules[0].when.content.detector.min_count: expected an integer >= 1",
        ),
        (
            "rules:\n  - name: x\n    when: {content: {detector: {name: nik, confidence: sure}}}\n"
            "    then: [deliver]\n",
            "3:56: rules[0].when.content.detector.confidence: expected one of high, low, medium",
        ),
        (
            "rules:\n  - name: x\n    when: {content: {detector: {name: nik, min: 2, "
            "min_count: 3}}}\n    then: [deliver]\n",
            "3:49: rules[0].when.content.detector.min: give min or min_count, not both",
        ),
        (
            "rules:\n  - name: x\n    when: {draft: maybe}\n    then: [deliver]\n",
            "3:19: rules[0].when.draft: expected true or false",
        ),
        (
            "rules:\n  - name: x\n    then: [{bcc: not-an-address}]\n",
            "3:18: rules[0].then[0].bcc: not a mail address: 'not-an-address'",
        ),
        (
            "rules:\n  - name: x\n    then: [route]\n",
            "3:12: rules[0].then[0]: route needs a route name",
        ),
        (
            "rules:\n  - name: x\n    then: [{subject_prefix: '[{oops'}]\n",
            "3:29: rules[0].then[0].subject_prefix: bad placeholder",
        ),
        (
            "rules:\n  - name: x\n    when: {not: {label: []}}\n    then: [deliver]\n",
            "3:25: rules[0].when.not.label: expected a string or a non-empty list",
        ),
        (
            "rules:\n  - name: x\n    when: {any: {size: {min: 1}}}\n    then: [deliver]\n",
            "3:17: rules[0].when.any: expected a non-empty list of condition blocks",
        ),
        (
            "rules:\n  - name: x\n    when: {attachment: {reason: x}}\n    then: [deliver]\n",
            "3:25: rules[0].when.attachment.reason: unknown key",
        ),
        ("version: 2\n", "1:10: version: unsupported version (expected 1)"),
        (
            "classifications:\n  rahasia level: {}\n",
            "2:3: classifications.rahasia level: bad level name",
        ),
        (
            "classifications:\n  A: {aliases: [x]}\n  B: {aliases: [X]}\n",
            "3:16: classifications.B.aliases: alias 'X' already names A",
        ),
        (
            "rules:\n  - name: x\n    before: nothing\n    then: [deliver]\n",
            "3:13: rules[0].before: unknown rule 'nothing'",
        ),
    ],
)
def test_single_errors(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        Policy.load([str(path)])
    assert len(info.value.errors) == 1, info.value
    assert str(info.value.errors[0]).startswith(f"{path}:{error}")


def test_later_file_cannot_add_levels(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(
        "classifications:\n  RAHASIA: {aliases: [Vertraulich]}\n  GEHEIM: {aliases: [Geheim]}\n"
    )
    with pytest.raises(PolicyError) as info:
        Policy.load([str(SHIPPED), str(site)])
    (err,) = info.value.errors
    assert str(err).startswith(f"{site}:3:3: classifications.GEHEIM: unknown level 'GEHEIM'")


def test_no_files() -> None:
    with pytest.raises(PolicyError, match="no policy file given"):
        Policy.load([])
