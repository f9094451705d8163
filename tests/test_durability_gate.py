"""The gate between unary requests and snapshots (service/durability/gate.py)."""

from __future__ import annotations

import asyncio

from service.durability.gate import Gate


def test_a_drain_waits_for_those_inside_and_holds_newcomers_back() -> None:
    async def main() -> list[str]:
        g = Gate()
        g.start()
        order: list[str] = []
        release = asyncio.Event()

        async def request(name: str, wait: bool) -> None:
            async with g.hold():
                order.append(f"in {name}")
                if wait:
                    await release.wait()
            order.append(f"out {name}")

        first = asyncio.create_task(request("a", True))
        await asyncio.sleep(0)
        drained = asyncio.create_task(g.drain(None))
        second = asyncio.create_task(request("b", False))
        await asyncio.sleep(0.02)
        assert not drained.done() and order == ["in a"]
        release.set()
        assert await drained is True
        order.append("snapshot")
        g.reopen()
        await asyncio.gather(first, second)
        return order

    assert asyncio.run(main()) == ["in a", "out a", "snapshot", "in b", "out b"]


def test_a_drain_that_times_out_or_is_cancelled_reopens_the_gate() -> None:
    async def main() -> None:
        g = Gate()
        g.start()
        release = asyncio.Event()

        async def stuck() -> None:
            async with g.hold():
                await release.wait()

        t = asyncio.create_task(stuck())
        await asyncio.sleep(0)
        assert await g.drain(0.02) is False
        async with g.hold():  # open again
            pass
        d = asyncio.create_task(g.drain(None))
        await asyncio.sleep(0.01)
        d.cancel()
        await asyncio.gather(d, return_exceptions=True)
        await asyncio.wait_for(_enter(g), 1.0)  # open again after the cancel
        release.set()
        await t

    asyncio.run(main())


async def _enter(g: Gate) -> None:
    async with g.hold():
        pass


def test_before_start_nothing_waits() -> None:
    async def main() -> None:
        g = Gate()
        async with g.hold():
            assert g.inside == 1
        assert g.inside == 0

    asyncio.run(main())
