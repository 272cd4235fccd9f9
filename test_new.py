import pytest

import bridge


def played(*steps: str) -> bridge.Playback:
    """A Playback after these steps: "A 300" sends 300 ms of reply A, "mark" closes
    the open chunk, "back 1" is mark 1 come back, "at 500" the stream clock."""
    playback = bridge.Playback()
    for step in steps:
        word, _, value = step.partition(" ")
        if word == "mark":
            playback.close()
        elif word == "back":
            playback.mark_back(value)
        elif word == "at":
            playback.clock_ms = int(value)
        else:
            playback.add(word, float(value))
    return playback


# What was sent, which marks came back, the clock: where each reply is cut.
@pytest.mark.parametrize(
    "steps, cuts",
    [
        ((), {}),  # nothing sent: nothing to cut
        (
            ("A 1000", "mark", "at 400"),
            {"A": 400},
        ),  # heard for as long as the clock ran
        (("at 100", "A 1000", "mark", "at 350"), {"A": 250}),  # from when it began
        (("A 1000", "mark", "at 5000"), {"A": 1000}),  # never past what was sent
        (("at 900", "A 1000", "at 100"), {"A": 0}),  # a clock that went back
        (("A 1000", "mark", "A 500", "mark", "at 1200", "back 1"), {"A": 1000}),
        (("A 1000", "mark", "at 1000", "back 1", "A 500", "at 1300"), {"A": 1300}),
        (("A 300", "mark", "B 300", "mark", "at 100"), {"A": 100, "B": 0}),  # B unheard
        (("A 300", "mark", "at 300", "back 1"), {}),  # played to its end
        (("A 300", "mark", "back 7", "at 100"), {"A": 100}),  # a mark not ours
        (("A 300", "at 200"), {"A": 200}),  # the open chunk plays too
    ],
)
def test_where_a_reply_is_cut(steps, cuts):
    playback = played(*steps)
    assert playback.cut() == cuts
    assert playback.queued == [] and playback.queued_ms() == 0


def test_a_chunk_grows_until_marked_and_is_named_by_its_number():
    playback = played("A 200", "A 300")
    assert playback.queued == [bridge.Chunk("1", "A", 0, 500)]
    assert playback.close() == "1" and playback.close() == ""
    assert playback.add("A", 100) == bridge.Chunk("2", "A", 500, 600)
    assert playback.queued_ms() == 600


def test_late_audio_of_a_cut_reply_is_known():
    playback = played("A 300")
    playback.cut()
    assert playback.cut_reply == "A"


class Streaming:
    streaming = True  # a call whose stream has started


CA = "CA" + "1" * 32


@pytest.mark.parametrize(
    "token, calls, parameters, why",
    [
        ("", {}, {}, ""),
        ("t", {}, {}, "stream refused: no valid proof"),
        (
            "t",
            {},
            {"proof": ("t", "CA" + "2" * 32)},
            "stream refused: no valid proof",
        ),
        (
            "t",
            {},
            {"proof": ("other", CA)},
            "stream refused: no valid proof",
        ),
        ("t", {}, {"proof": ("t", CA)}, ""),
        ("", {CA: Streaming()}, {}, "a second stream for the call refused"),
        ("", {CA: Streaming()}, {"Voicemail": "machine_end_beep"}, ""),
        ("", {"CA" + "2" * 32: Streaming()}, {}, "stream refused: MAX_CALLS=1 reached"),
    ],
)
def test_why_a_stream_is_refused(token, calls, parameters, why):
    config = bridge.Config(twilio_auth_token=token, max_calls=1)
    state = bridge.State(config, calls=calls)
    if "proof" in parameters:  # made now: a proof expires
        parameters = {"proof": bridge.call_proof(*parameters["proof"])}
    start = {"callSid": CA, "customParameters": parameters}
    assert bridge.stream_refusal(state, start) == why


def test_a_proof_opens_one_stream():
    state = bridge.State(bridge.Config(twilio_auth_token="t"))
    start = {"callSid": CA, "customParameters": {"proof": bridge.call_proof("t", CA)}}
    assert bridge.stream_refusal(state, start) == ""
    assert (
        bridge.stream_refusal(state, start)
        == "stream refused: its proof was used already"
    )


# ---------------------------------------------------------------- review (#31)
import asyncio  # noqa: E402
import json  # noqa: E402
import stat  # noqa: E402

from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestServer, make_mocked_request  # noqa: E402

from test_bridge import log_everything  # noqa: E402, F401 (the autouse fixture)
from test_bridge import (  # noqa: E402
    CA1,
    REPORTING,
    REST,
    SID,
    async_test,
    call_goes_on,
    call_tool,
    caller_said,
    expect,
    expire,
    post_signed,
    reply_done,
    report_file,
    reported,
    say,
    tool_output,
    world,
)

LIVE_KEY = "sk-live-0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    "status, live",
    [("in-progress", True), ("ringing", True), ("completed", False), ("busy", False)],
)
@async_test
async def test_a_call_twilio_says_is_not_live_is_hung_up(status, live, caplog):
    async with world(**REST) as w:
        w.api.status = status
        twilio, session = await w.answered_call()
        if live:
            await call_goes_on(twilio, session)
        else:
            await twilio.wait_closed()
            await session.wait_closed()
            assert (
                f"the call is {status}, not live: a replay? hanging up" in caplog.text
            )
        assert w.api.checked == [
            f"/2010-04-01/Accounts/{SID}/Calls/{twilio.call_sid}.json"
        ]


@async_test
async def test_a_replayed_webhook_to_a_new_process_buys_no_session(caplog):
    form = {"CallSid": CA1, "AccountSid": SID, "From": "+15551230000"}
    async with world(**REST) as w:
        w.api.status = "completed"  # the call ended long ago
        assert (await post_signed(w, form)).status == 200  # a new process: no memory
        session = await w.openai.session()
        await session.wait_closed()  # the greeting was the most it bought
        assert "not live: a replay?" in caplog.text


@async_test
async def test_twilio_unreachable_leaves_the_call_up_with_a_warning(caplog):
    async with world(**REST, twilio_api_url="http://127.0.0.1:9") as w:
        twilio, session = await w.answered_call()
        await call_goes_on(twilio, session)
        assert "not checked with Twilio" in caplog.text


async def redirect_loop(request: web.Request) -> web.Response:
    raise web.HTTPTemporaryRedirect(request.path)


@async_test
async def test_a_redirect_loop_never_puts_the_key_in_a_log_or_file(tmp_path, caplog):
    loop = web.Application()
    loop.router.add_route("*", "/{path:.*}", redirect_loop)
    handed_on = []
    async with TestServer(loop) as server:
        url = str(server.make_url("/v1/realtime")).replace("http", "ws", 1)
        base = str(server.make_url("")).rstrip("/")
        config = {"openai_api_key": LIVE_KEY, "transcript_dir": str(tmp_path)}
        config |= {"openai_realtime_url": url, "openai_api_url": base, **REPORTING}
        bridge_after = bridge.after_call
        bridge.after_call = handed_on.append
        try:
            async with world(**config) as w:
                twilio = await w.call()
                await twilio.send(event="stop", stop={})
                await twilio.wait_closed()
                call = next(iter(w.app[bridge.STATE].calls.values()), None)
                assert call is None or True
        finally:
            bridge.after_call = bridge_after
    assert "TooManyRedirects" in caplog.text
    assert LIVE_KEY not in caplog.text and LIVE_KEY[:20] not in caplog.text
    for path in tmp_path.iterdir():
        assert LIVE_KEY[:20] not in path.read_text()


def test_the_mask_takes_secrets_out_of_lines_and_tracebacks(caplog):
    bridge.SECRETS[LIVE_KEY] = "OPENAI_API_KEY"
    try:
        raise ValueError(f"Bearer {LIVE_KEY}")
    except ValueError:
        bridge.log.exception("failed with %s", LIVE_KEY)
    assert LIVE_KEY not in caplog.text
    assert "failed with <OPENAI_API_KEY>" in caplog.text
    assert "ValueError: Bearer <OPENAI_API_KEY>" in caplog.text


@async_test
async def test_a_key_pressed_mid_reply_cancels_it_then_is_answered():
    async with world() as w:
        twilio, session = await w.answered_call()
        await session.send(type="response.created", response={"id": "resp_1"})
        await say(session, "item_menu", "m1")
        await expect(twilio, "media m1")
        await twilio.send(event="dtmf", dtmf={"track": "inbound_track", "digit": "1"})
        assert (await session.next())["type"] == "conversation.item.truncate"
        assert await session.next() == {"type": "response.cancel"}
        assert (await session.next())["type"] == "conversation.item.create"
        assert await session.next() == {"type": "response.create"}


@async_test
async def test_media_takes_no_compression_and_little_before_start(caplog):
    async with world() as w:
        ws = await w.client.ws_connect("/media", compress=15)
        assert ws.compress == 0  # not negotiated
        for _ in range(bridge.BEFORE_START):
            await ws.send_str(json.dumps({"event": "media", "media": {}}))
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert "stream refused: no start message from Twilio" in caplog.text
        assert not w.openai.sessions


@async_test
async def test_streams_waiting_for_start_are_capped_and_counted(caplog):
    async with world(max_calls=2) as w:
        waiting = [await w.client.ws_connect("/media") for _ in range(2)]
        health = await (await w.client.get("/health")).json()
        assert health["calls"] == 2
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await w.client.ws_connect("/media")
        assert refused.value.status == 503
        assert "too many streams before start" in caplog.text
        for ws in waiting:
            await ws.close()


@async_test
async def test_sessions_that_expire_at_once_end_the_call(caplog):
    async with world() as w:
        twilio, session = await w.answered_call()
        for _ in range(bridge.EARLY_EXPIRIES):
            await expire(session)
            if len(w.openai.sessions) < bridge.EARLY_EXPIRIES:
                session = await w.openai.session()
        await twilio.wait_closed()
        assert len(w.openai.sessions) == bridge.EARLY_EXPIRIES
        assert (
            "OpenAI's sessions expire at once (3 in a row): hanging up" in caplog.text
        )


@async_test
async def test_an_early_session_lost_before_the_stream_is_replaced(caplog):
    async with world() as w:
        w.openai.drop = 1
        form = {"CallSid": CA1, "From": "+15551230000", "To": "+15557650000"}
        assert (await w.client.post("/incoming", data=form)).status == 200
        call = w.app[bridge.STATE].calls[CA1]

        async def lost():  # the bridge's end of the early session has gone
            while not call.model.socket or call.model.socket.get_extra_info("socket"):
                await asyncio.sleep(0.01)

        await asyncio.wait_for(lost(), 5)
        twilio = await w.call()
        second = await w.openai.session()
        assert (await second.next())["type"] == "session.update"
        assert await second.next() == {"type": "response.create"}  # the greeting
        await call_goes_on(twilio, second)
        assert "the session was lost before the stream came" in caplog.text


@async_test
async def test_a_burst_of_keys_is_one_turn_one_reply_and_no_digits_logged(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(bridge, "KEYS_PAUSE", 0.3)
    async with world(transcript_dir=str(tmp_path), **REPORTING) as w:
        twilio, session = await w.answered_call()
        for digit in "4711":
            await twilio.send(
                event="dtmf", dtmf={"track": "inbound_track", "digit": digit}
            )
        item = await session.next_of("conversation.item.create")
        assert (
            item["item"]["content"][0]["text"]
            == "The caller pressed 4711 on the keypad."
        )
        assert await session.next() == {"type": "response.create"}
        await expire(session)
        second = await w.openai.session()
        assert (await second.next())["type"] == "session.update"
        assert (await second.next())["item"]["content"][0]["text"] == "pressed 4711"
        await twilio.send(event="stop", stop={})
        await twilio.wait_closed()
        await reported(w)
    assert "caller pressed 4 keys" in caplog.text and "4711" not in caplog.text
    lines = (tmp_path / f"{twilio.call_sid}.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["text"] == "pressed 4711"
    request = w.responses.requests[0][1]
    assert request["input"][1]["content"] == "caller: pressed 4711"


@async_test
async def test_a_flood_of_keys_is_one_item_of_at_most_max_keys(monkeypatch, caplog):
    monkeypatch.setattr(bridge, "KEYS_PAUSE", 0.3)
    async with world() as w:
        twilio, session = await w.answered_call()
        for _ in range(500):
            await twilio.send(
                event="dtmf", dtmf={"track": "inbound_track", "digit": "5"}
            )
        item = await session.next_of("conversation.item.create")
        text = item["item"]["content"][0]["text"]
        assert text == f"The caller pressed {'5' * bridge.MAX_KEYS} on the keypad."
        assert await session.next() == {"type": "response.create"}
        await call_goes_on(twilio, session)
        assert caplog.text.count("caller pressed") == 1


@async_test
async def test_transcripts_and_reports_are_private(tmp_path, monkeypatch):
    folder = tmp_path / "calls"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("TRANSCRIPT_DIR", str(folder))
    bridge.create_app()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    async with world(transcript_dir=str(folder), **REPORTING) as w:
        await caller_said(w, "Hello?")
        await reported(w)
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@async_test
async def test_the_models_strings_are_clean_before_anyone_sees_them(
    tmp_path, monkeypatch
):
    handed_on = []
    monkeypatch.setattr(bridge, "after_call", handed_on.append)
    hostile = {"summary": "\ud800\u2028\x00 x\ny", "sentiment": 0, "lead_score": 1}
    text = json.dumps(hostile | {"follow_up": "\x00"})
    body = {
        "status": "completed",
        "output": [
            {"type": "message", "content": [{"type": "output_text", "text": text}]}
        ],
    }
    async with world(transcript_dir=str(tmp_path), **REPORTING) as w:
        w.responses.answers = [(200, json.dumps(body))]
        twilio = await caller_said(w, "Hello?\x00")
        await reported(w)
    [report] = handed_on
    assert (report["summary"], report["follow_up"]) == (" x\ny", "")
    assert report_file(tmp_path, twilio)["summary"] == " x\ny"


@async_test
async def test_a_malformed_audio_delta_is_dropped_and_barge_in_still_works(caplog):
    async with world() as w:
        twilio, session = await w.answered_call()
        await session.send(
            type="response.output_audio.delta", item_id=["x"], delta="AAAA"
        )
        await say(session, "item_A", "a1")
        await expect(twilio, "media a1")
        await session.send(
            type="input_audio_buffer.speech_started", audio_start_ms=0, item_id="u"
        )
        assert (await twilio.receive())["event"] == "clear"
        assert "malformed OpenAI response.output_audio.delta ignored" in caplog.text


@async_test
async def test_a_huge_audio_delta_goes_to_twilio_a_second_at_a_time():
    async with world() as w:
        twilio, session = await w.answered_call()
        await say(session, "item_A", "big", ms=10_000)  # 80,000 bytes in one delta
        await reply_done(session)
        sizes, marks = [], []
        while len(marks) < 10:
            message = await twilio.receive()
            if message["event"] == "media":
                sizes.append(len(message["media"]["payload"]))
            else:
                marks.append(message["mark"]["name"])
        assert len(sizes) == 10 and max(sizes) <= bridge.MAX_PIECE
        assert marks == [str(n) for n in range(1, 11)]


@async_test
async def test_a_tools_huge_output_is_cut_with_a_note(monkeypatch):
    monkeypatch.setattr(bridge, "TOOLS", dict(bridge.TOOLS))
    bridge.tool("Echo.", {"type": "object"})(echo := lambda **kw: "x" * 2_000_000)
    echo.__name__ = "echo"
    async with world() as w:
        twilio, session = await w.answered_call()
        await call_tool(session, "<lambda>", "{}")
        output = await tool_output(session)
    assert len(output) < bridge.MAX_TOOL_OUTPUT + 100
    assert output.endswith(
        f"[cut: {2_000_000 - bridge.MAX_TOOL_OUTPUT} characters more]"
    )


@pytest.mark.parametrize(
    "peer, token, allowed",
    [
        ("127.0.0.1", "", True),
        ("::1", "", True),
        ("::ffff:127.0.0.1", "", True),
        ("203.0.113.5", "", False),
        ("10.1.2.3", "", False),
        ("203.0.113.5", "12345", True),
    ],
)
@async_test
async def test_unsigned_only_this_machine_may_call(peer, token, allowed, caplog):
    app = bridge.make_app(bridge.Config(twilio_auth_token=token))
    transport = type("T", (), {"get_extra_info": lambda self, n, d=None: (peer, 1)})()
    request = make_mocked_request("POST", "/incoming", app=app, transport=transport)

    async def handler(request):
        return web.Response(text="answered")

    if allowed:
        assert (await bridge.local_unless_signed(request, handler)).text == "answered"
    else:
        with pytest.raises(web.HTTPForbidden):
            await bridge.local_unless_signed(request, handler)
        assert "only this machine may call: set TWILIO_AUTH_TOKEN" in caplog.text


import aiohttp  # noqa: E402
