"""The inspection pool with real child processes: a message past its hard budget is
stopped (the child killed and replaced) and reported unscannable, while the others
are answered; a child that dies or raises costs its message only."""

from __future__ import annotations

import asyncio

import pytest

from milter.app.inspection import InspectionFailed, InspectionPool
from tests import inspection_probes


@pytest.fixture
async def pool() -> InspectionPool:
    p = InspectionPool(inspection_probes.slow_on_request, size=2, budget=1.5)
    await p.start()
    yield p  # type: ignore[misc]
    await p.close()


async def test_a_message_past_its_budget_is_stopped_and_the_others_go_on(
    pool: InspectionPool,
) -> None:
    slow = asyncio.create_task(pool.inspect(b"SLOW"))
    fast = await pool.inspect(b"ordinary message")
    assert fast.size == 16 and not fast.unscannable
    assert not slow.done()  # answered while the slow one was still being inspected
    stopped = await slow
    assert stopped.unscannable and "time budget" in stopped.unscannable[0]
    assert stopped.size == 4
    # The killed child was replaced: two messages at once are both served.
    again = await asyncio.gather(pool.inspect(b"a"), pool.inspect(b"bb"))
    assert [f.size for f in again] == [1, 2]


async def test_a_child_that_dies_fails_its_message_only(pool: InspectionPool) -> None:
    with pytest.raises(InspectionFailed, match="ended"):
        await pool.inspect(b"CRASH")
    assert (await pool.inspect(b"next")).size == 4


async def test_an_inspector_error_is_reported_and_the_child_kept(pool: InspectionPool) -> None:
    first = await pool.inspect(b"x")
    with pytest.raises(InspectionFailed, match="ValueError: probe failure"):
        await pool.inspect(b"RAISE")
    pids = {(await pool.inspect(b"y")).subject for _ in range(4)}
    assert first.subject in pids | {first.subject}
    assert len(pids) <= 2  # no child was replaced for an ordinary error


async def test_a_reloaded_inspector_retires_the_old_children(pool: InspectionPool) -> None:
    assert (await pool.inspect(b"x")).subject.startswith("pid ")
    pool.use(inspection_probes.tagged)
    results = await asyncio.gather(*(pool.inspect(b"x") for _ in range(4)))
    assert {f.subject for f in results} == {"tagged"}
