"""The agency figures of SE 79 clause 3.b: what each agency's mail ran into, per week.

Heads of agency are responsible for documents not reaching other parties; they see,
per week, how many of their agency's messages the gateway held, how many of those
were released or deleted, how many recipients it rejected outright, which rules and
clauses caught them and where they were going. The dashboard of the review UI and the
weekly digest (``milter report --weekly``) both draw on ``agency_weeks``.

An agency is a set of sender domains, subdomains included. A week starts on Monday
00:00 local time (the notices' time zone, WIB by default). Holds count in the week
they were received, with the status they have now (a message held on Friday and
released on Monday counts as released in Friday's week), so every message counts once.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from milter.quarantine.store import DELETED, REJECTED, RELEASED, Fact, QuarantineStore

# The ``agency`` of the summary over every sender (officers' overall view).
ALL = "*"
# How many entries each "top" list keeps.
TOP = 5
WEEK = 7 * 86400.0


@dataclass(frozen=True)
class AgencyWeek:
    """One agency's figures for one week."""

    agency: str  # a domain, or ALL
    week_start: float  # Monday 00:00 local time, as a timestamp
    held: int
    released: int
    deleted: int
    rejected: int  # messages with at least one recipient rejected by the policy
    top_rules: list[tuple[str, int]]
    top_clauses: list[tuple[str, int]]
    top_destinations: list[tuple[str, int]]  # recipient domains

    def to_dict(self) -> dict[str, object]:
        return {
            "agency": self.agency,
            "week_start": self.week_start,
            "held": self.held,
            "released": self.released,
            "deleted": self.deleted,
            "rejected": self.rejected,
            "top_rules": [list(p) for p in self.top_rules],
            "top_clauses": [list(p) for p in self.top_clauses],
            "top_destinations": [list(p) for p in self.top_destinations],
        }


def week_start(at: float, tz: str = "Asia/Jakarta") -> float:
    """The Monday 00:00 (local time in ``tz``) starting the week that holds ``at``."""
    zone = ZoneInfo(tz)
    local = dt.datetime.fromtimestamp(at, zone)
    monday = (local - dt.timedelta(days=local.weekday())).date()
    return dt.datetime.combine(monday, dt.time(), zone).timestamp()


def last_complete_week(now: float, tz: str = "Asia/Jakarta") -> tuple[float, float]:
    """[start, end) of the last week that ended before ``now``."""
    end = week_start(now, tz)
    return week_start(end - 1, tz), end


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _in(sender: str, agency: str) -> bool:
    if agency == ALL:
        return True
    d = _domain(sender)
    return d == agency or d.endswith("." + agency)


def _top(counter: Counter[str]) -> list[tuple[str, int]]:
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]


def _figures(agency: str, start: float, facts: Iterable[Fact]) -> AgencyWeek:
    held = released = deleted = rejected = 0
    rules: Counter[str] = Counter()
    clauses: Counter[str] = Counter()
    destinations: Counter[str] = Counter()
    for f in facts:
        if f.status == REJECTED:
            rejected += 1
        else:
            held += 1
            released += f.status == RELEASED
            deleted += f.status == DELETED
        rules.update(set(f.rules))
        # A rule's clause text may name several ("2.c, 3.b"): each counts.
        clauses.update({c.strip() for text in f.clauses for c in text.split(",") if c.strip()})
        destinations.update({_domain(r) for r in f.recipients if "@" in r})
    return AgencyWeek(
        agency,
        start,
        held,
        released,
        deleted,
        rejected,
        _top(rules),
        _top(clauses),
        _top(destinations),
    )


def agencies_of_heads(store: QuarantineStore) -> list[str]:
    """Every agency a head of agency account (enabled) is responsible for."""
    from milter.quarantine.users import users_of

    out: list[str] = []
    for user in users_of(store).list():
        if user.role == "head" and not user.disabled:
            out += [a for a in user.agencies if a not in out]
    return sorted(out)


def agency_weeks(
    store: QuarantineStore,
    agencies: Sequence[str] | None,
    since: float,
    until: float,
    *,
    tz: str = "Asia/Jakarta",
) -> list[AgencyWeek]:
    """The figures per agency and week for the weeks overlapping [since, until).

    ``agencies``: the sender domains to report on (a head's own); None means every
    agency a head account has, plus the summary over all senders (agency ``ALL``).
    Weeks are whole (from the Monday before ``since``); ordered by agency, then week.
    Every week in range appears, with zeros when nothing happened.
    """
    first = week_start(since, tz)
    names = list(agencies) if agencies is not None else [*agencies_of_heads(store), ALL]
    starts: list[float] = []
    s = first
    while s < until:
        starts.append(s)
        # Next Monday: a week is not always 7 * 86400 s where the zone changes offset.
        s = week_start(s + WEEK + 3 * 3600, tz)
    end = week_start(starts[-1] + WEEK + 3 * 3600, tz) if starts else first
    domains = None if agencies is None else tuple(a.lower() for a in agencies)
    facts = store.facts(first, end, domains)
    out: list[AgencyWeek] = []
    for name in sorted(set(names), key=lambda n: (n == ALL, n)):
        mine = [f for f in facts if _in(f.sender, name.lower())]
        for i, start in enumerate(starts):
            stop = starts[i + 1] if i + 1 < len(starts) else end
            out.append(_figures(name, start, (f for f in mine if start <= f.at < stop)))
    return out
