"""Tests for issue 30, to be merged into test_bridge.py in its sections."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest

import bridge
from test_bridge import (  # noqa: F401
    CA1,
    GUNICORN,
    TIMEOUT,
    async_test,
    call_goes_on,
    log_everything,
    logged,
    running_bridge,
    sid,
    wound_down,
)

ONE_WORKER = tuple(
    "1" if part == "2" and GUNICORN[i - 1] == "--workers" else part
    for i, part in enumerate(GUNICORN)
)


@async_test
async def test_a_worker_recycled_by_max_requests_drains_its_calls():
    pytest.importorskip("gunicorn")
    command = (*ONE_WORKER, "--max-requests", "4")
    async with running_bridge(*command, DRAIN_SECONDS="30") as workers:
        twilio, session = await workers.answered_call(1)
        for _ in range(4):  # past --max-requests: gunicorn retires the worker
            await workers.health()
        await workers.logged("draining: 1 call for up to 30 s")
        await call_goes_on(twilio, session)  # still heard both ways
        await twilio.hang_up()
        await session.wait_closed()
        await workers.logged("all calls ended")
        workers.proc.send_signal(signal.SIGTERM)
        assert await workers.exit_code() == 0


@async_test
async def test_a_worker_whose_master_died_drains_its_calls_and_exits():
    pytest.importorskip("gunicorn")
    async with running_bridge(*ONE_WORKER, DRAIN_SECONDS="30") as workers:
        twilio, session = await workers.answered_call(1)
        workers.proc.kill()  # the master, and only it
        await workers.logged("draining: 1 call for up to 30 s")
        await call_goes_on(twilio, session)
        await twilio.hang_up()
        await session.wait_closed()
        await workers.logged("all calls ended")
