# A phone bridge: a Twilio call talks to an OpenAI Realtime voice agent.
#
# Twilio posts the call to /incoming; our TwiML opens a Media Stream (a WebSocket
# of 20 ms mu-law frames) to /media; for each call we open one OpenAI Realtime
# WebSocket, and two tasks pump the two directions. Both sides speak G.711 mu-law
# at 8 kHz, so the audio passes through untouched.
#
# What the popular samples get wrong is barge-in. The model sends audio much
# faster than the caller hears it, so when the caller interrupts, the model must
# be told how much of its reply was *heard*, not sent, or it believes it said
# things the caller never heard. Twilio's marks and stream clock tell us (see
# Call.interrupt).
#
# Run it:  OPENAI_API_KEY=sk-... python bridge.py

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import inspect
import json
import logging
import os
import statistics
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple
from xml.sax.saxutils import quoteattr
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web

log = logging.getLogger("bridge")

# ----------------------------------------------------------------------------
# Configuration

DEFAULT_INSTRUCTIONS = (
    "You are the friendly receptionist of a small business, answering the phone. "
    "Greet the caller warmly and ask how you can help. Keep every reply short: one "
    "or two spoken sentences. When the caller is done, say goodbye, then call end_call."
)


@dataclass(frozen=True)
class Config:
    openai_api_key: str
    openai_url: str = "wss://api.openai.com/v1/realtime"
    model: str = "gpt-realtime-2.1"
    port: int = 8080
    public_url: str = ""  # the https address Twilio calls; else the Host header
    twilio_auth_token: str = ""  # set: every request must carry Twilio's signature
    voice: str = "marin"
    instructions: str = DEFAULT_INSTRUCTIONS
    transcript_dir: str = ""  # set: one JSON Lines transcript per call

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Config:
        public_url = env.get("PUBLIC_URL", "").rstrip("/")
        if public_url and "://" not in public_url:
            public_url = "https://" + public_url
        return cls(
            openai_api_key=env.get("OPENAI_API_KEY", ""),
            openai_url=env.get("OPENAI_REALTIME_URL", cls.openai_url),
            model=env.get("OPENAI_MODEL", cls.model),
            port=int(env.get("PORT", cls.port)),
            public_url=public_url,
            twilio_auth_token=env.get("TWILIO_AUTH_TOKEN", ""),
            voice=env.get("VOICE", cls.voice),
            instructions=env.get("INSTRUCTIONS", cls.instructions),
            transcript_dir=env.get("TRANSCRIPT_DIR", ""),
        )


MAX_TWILIO_MESSAGE = 64 * 1024  # Twilio's frames are ~300 bytes, `start` a few KB
CONNECT_TIMEOUT = 10.0  # seconds for the OpenAI handshake, and for Twilio's `start`
TOOL_TIMEOUT = 10.0  # seconds a tool may run before the model is told it failed
GOODBYE_GRACE = 3.0  # seconds past the goodbye's length to wait for its last mark
# A renewed session is told the last REPLAY_TURNS turns: recent turns hold what
# matters (names, what was agreed), and every replayed word is paid for again as
# input on each later response.
REPLAY_TURNS = 40
# Agent audio gets a mark every MARK_EVERY_MS and at the end of each reply, not
# after every delta: between marks the stream clock says how far playback got,
# and each mark costs a message each way.
MARK_EVERY_MS = 1000

# ----------------------------------------------------------------------------
# Tools: a Python function (plain or async) and a JSON Schema of its arguments.

TOOLS: dict[str, tuple[Callable, dict]] = {}  # name -> (function, declaration)


def tool(description: str, parameters: dict) -> Callable:
    """Make a function a tool the model may call, under the function's name."""

    def register(function: Callable) -> Callable:
        declaration = {"type": "function", "name": function.__name__}
        declaration |= {"description": description, "parameters": parameters}
        TOOLS[function.__name__] = (function, declaration)
        return function

    return register


@tool(
    "The local date and time in an IANA time zone, e.g. Asia/Tokyo.",
    {
        "type": "object",
        "properties": {"zone": {"type": "string"}},
        "required": ["zone"],
    },
)
def current_time(zone: str) -> str:
    return datetime.now(ZoneInfo(zone)).strftime("%A %d %B %Y, %H:%M")


@tool("Hang up. Call it right after saying goodbye.", {"type": "object"})
def end_call() -> None:
    """Declared here for the model; the call itself answers it (Call.end_call)."""


def session_update(config: Config) -> dict:
    """The first event of every OpenAI session: mu-law both ways, server VAD."""
    vad = {"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 500}
    vad |= {"interrupt_response": True, "create_response": True}
    audio_in = {"format": {"type": "audio/pcmu"}, "turn_detection": vad}
    audio_in["transcription"] = {"model": "gpt-4o-mini-transcribe"}
    audio_out = {"format": {"type": "audio/pcmu"}, "voice": config.voice}
    session = {"type": "realtime", "instructions": config.instructions}
    session["audio"] = {"input": audio_in, "output": audio_out}
    session["tools"] = [declaration for _, declaration in TOOLS.values()]
    return {"type": "session.update", "session": session}


def message_item(role: str, text: str) -> dict:
    """A text turn for the conversation: keypad presses, replayed history."""
    content = {"type": "input_text" if role == "user" else "output_text", "text": text}
    item = {"type": "message", "role": role, "content": [content]}
    return {"type": "conversation.item.create", "item": item}


# ----------------------------------------------------------------------------
# The webhook, and Twilio's request signatures


def public_base(request: web.Request, websocket: bool = False) -> str:
    # Behind a tunnel we see http://localhost, but Twilio signs and connects to the
    # public address: PUBLIC_URL, or else the Host header the tunnel passes on.
    base = request.app[CONFIG].public_url or f"https://{request.host}"
    return base.replace("http", "ws", 1) if websocket else base  # https -> wss


def twilio_signature(token: str, url: str, params: dict[str, str]) -> str:
    """Twilio's X-Twilio-Signature: HMAC-SHA1 of the URL and the sorted POST fields."""
    data = url + "".join(f"{name}{value}" for name, value in sorted(params.items()))
    digest = hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def check_signature(request: web.Request, url: str, params: dict[str, str]) -> None:
    """Refuse (403) a request that Twilio did not sign, before any OpenAI cost."""
    token = request.app[CONFIG].twilio_auth_token
    if not token:
        return  # not configured: make_app warned at start-up
    given = request.headers.get("X-Twilio-Signature", "")
    # Twilio may sign with or without an explicit :443, a handshake with a trailing /.
    scheme, _, rest = url.partition("://")
    host, _, path = rest.partition("/")
    host = host.removesuffix(":443")
    hosts = {host, host + ":443" if scheme in ("https", "wss") else host}
    urls = {f"{scheme}://{h}/{p}" for h in hosts for p in {path, path + "/"}}
    signed = (twilio_signature(token, u, params) for u in urls)
    if not (given.isascii() and any(hmac.compare_digest(s, given) for s in signed)):
        log.warning("%s %s from %s: bad signature", request.method, url, request.remote)
        raise web.HTTPForbidden(text="invalid Twilio signature")


async def incoming(request: web.Request) -> web.Response:
    """Twilio's voice webhook: answer with TwiML that streams the call to /media."""
    form = await request.post()
    check_signature(request, public_base(request) + request.raw_path, dict(form))
    stream_url = public_base(request, websocket=True) + "/media"
    log.info("[%s] incoming call, streamed to %s", form.get("CallSid"), stream_url)
    # No query string on the stream URL: Twilio drops it. Nothing after <Connect>,
    # so when we close the socket, the call hangs up.
    stream = f"<Stream url={quoteattr(stream_url)}/>"
    twiml = f"<Response><Connect>{stream}</Connect></Response>"
    return web.Response(text=twiml, content_type="text/xml")


# ----------------------------------------------------------------------------
# One call's life


class Chunk(NamedTuple):
    """A stretch of agent audio sent to Twilio, ended by a mark of the same name."""

    mark: str
    item_id: str
    start_ms: float  # where it starts within its item's audio
    end_ms: float


def audio_ms(payload: str) -> float:
    """Length of base64 mu-law audio (8 bytes a millisecond), without decoding it."""
    return (len(payload) * 3 // 4 - payload.count("=", -2)) / 8


class CallLog(logging.LoggerAdapter):
    """Starts every line with the call's id, to follow one call in a busy log."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['call']}] {msg}", kwargs


class Call:
    """One phone call: its two sockets, and what the two pumps share."""

    def __init__(self, app: web.Application, twilio: web.WebSocketResponse) -> None:
        self.config: Config = app[CONFIG]
        self.http: aiohttp.ClientSession = app[HTTP]
        self.twilio = twilio
        self.openai: aiohttp.ClientWebSocketResponse | None = None
        self.openai_ready = asyncio.Event()  # cleared while the session is renewed
        self.stream_sid = ""
        self.stream_started = asyncio.Event()
        self.log = CallLog(log, {"call": "new call"})
        self.tasks: set[asyncio.Task] = set()  # the pumps, tool runs, the hang-up
        self.transcript: Path | None = None
        # Playback: what the caller has heard of the agent.
        self.stream_ms = 0  # Twilio's stream clock: the newest media timestamp
        self.unplayed: deque[Chunk] = deque()  # sent to Twilio, mark not back yet
        self.playing_since = 0  # stream_ms when unplayed[0] began to play
        self.played_out = asyncio.Event()  # set while nothing is left to play
        self.played_out.set()
        self.item_id = ""  # the assistant item whose audio we are forwarding
        self.item_ms = 0.0  # how much of it we have sent
        self.cut_item = ""  # the reply interrupted last: its late audio must not play
        self.chunks = 0  # chunks so far: each is named by its number
        self.mark_pending = False  # the newest chunk's mark is not sent yet
        # The conversation as text, and how fast the agent answers.
        self.history: deque[tuple[str, str]] = deque(maxlen=REPLAY_TURNS)
        self.started = time.monotonic()
        self.speech_stopped_at: float | None = None
        self.latencies_ms: list[float] = []
        self.barge_ins = 0

    async def run(self) -> None:
        try:
            # Twilio's first messages wait in its socket while this opens the OpenAI
            # session. Open it here, in the request's own task: measured under load,
            # a socket opened in a helper task (asyncio.wait_for, a pump) made every
            # later message about 0.3 ms slower.
            if not await self.open_session():
                return
            pumps = [self.start(self.pump_twilio()), self.start(self.pump_openai())]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await self.close()
            self.log.info(self.summary())

    async def close(self) -> None:
        """End the call on both sides. Safe to call more than once."""
        for task in list(self.tasks):
            task.cancel()
        if self.openai is not None:
            await self.openai.close()
        await self.twilio.close()

    def start(self, coroutine: Any) -> asyncio.Task:
        """Run a coroutine beside the pumps; close() cancels it with the call."""
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.task_done)
        return task

    def task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if isinstance(error, ConnectionResetError):  # a peer left mid-send
            self.log.info("socket closed under %s", task.get_coro().__name__)
        elif error is not None:
            self.log.error("%s failed", task.get_coro().__name__, exc_info=error)

    # -- From Twilio -----------------------------------------------------------

    def parse(self, msg: aiohttp.WSMessage, side: str, key: str) -> dict | None:
        """A JSON object with a string `key`, or None (logged) for anything else."""
        try:
            event = json.loads(msg.data) if msg.type == aiohttp.WSMsgType.TEXT else None
        except ValueError:
            event = None
        if isinstance(event, dict) and isinstance(event.get(key), str):
            return event
        what = msg.data if msg.type == aiohttp.WSMsgType.ERROR else msg.type.name
        self.log.warning("%s sent a message that is not an event (%s)", side, what)
        return None

    async def pump_twilio(self) -> None:
        async for msg in self.twilio:
            event = self.parse(msg, "Twilio", "event")
            try:
                if event is not None and await self.on_twilio_event(event):
                    return
            except (KeyError, TypeError, ValueError) as exc:
                self.log.warning("malformed Twilio %s ignored: %r", event["event"], exc)
        self.log.info("Twilio socket closed")

    async def on_twilio_event(self, event: dict) -> bool:
        """Act on one Twilio message; True when the stream has stopped."""
        kind = event["event"]
        if kind == "media" and self.stream_sid:
            media = event["media"]
            if not isinstance(media["payload"], str):
                raise TypeError("payload is not text")
            self.stream_ms = int(media["timestamp"])
            append = {"type": "input_audio_buffer.append", "audio": media["payload"]}
            await self.send_openai(append)
        elif kind == "start" and not self.stream_sid:
            self.on_start(event["start"])
        elif kind == "stop":
            self.log.info("Twilio stopped the stream: the caller hung up")
            return True
        elif kind == "start":
            self.log.warning("second start message ignored")
        elif kind != "connected" and not self.stream_sid:
            self.log.warning("%s before start ignored", kind)
        elif kind == "mark":
            self.on_mark(event["mark"]["name"])
        elif kind == "dtmf":
            await self.on_keypress(str(event["dtmf"]["digit"]))
        elif kind != "connected":
            self.log.warning("unknown Twilio event %r ignored", kind)
        return False

    def on_start(self, start: dict) -> None:
        stream_sid = start["streamSid"]
        if not isinstance(stream_sid, str) or not stream_sid:
            raise ValueError("no streamSid")
        self.stream_sid, call_sid = stream_sid, str(start.get("callSid", stream_sid))
        self.log.extra["call"] = call_sid  # type: ignore[index]
        self.log.info("stream %s started", stream_sid)
        self.stream_started.set()
        if self.config.transcript_dir:
            name = "".join(c for c in call_sid if c.isalnum()) or "call"
            self.transcript = Path(self.config.transcript_dir) / f"{name}.jsonl"

    # -- The OpenAI session ----------------------------------------------------

    async def open_session(self) -> bool:
        """Open and configure an OpenAI session, with the conversation so far."""
        url = f"{self.config.openai_url}?model={self.config.model}"
        headers = {"Authorization": f"Bearer {self.config.openai_api_key}"}
        try:
            openai = await self.http.ws_connect(url, headers=headers)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            refused = isinstance(exc, aiohttp.WSServerHandshakeError)
            why = f"HTTP {exc.status}" if refused else repr(exc)
            self.log.error("could not open the OpenAI session: %s", why)
            return False
        await openai.send_str(json.dumps(session_update(self.config)))
        for role, text in self.history:
            await openai.send_str(json.dumps(message_item(role, text)))
        self.openai = openai
        self.openai_ready.set()
        return True

    async def send_openai(self, event: dict) -> None:
        if not self.openai_ready.is_set():  # the session is being renewed
            await self.openai_ready.wait()
        await self.openai.send_str(json.dumps(event))

    async def pump_openai(self) -> None:
        try:
            await asyncio.wait_for(self.stream_started.wait(), CONNECT_TIMEOUT)
        except asyncio.TimeoutError:
            self.log.warning("no start message from Twilio")
            return
        await self.send_openai({"type": "response.create"})  # the agent greets first
        while True:
            async for msg in self.openai:
                event = self.parse(msg, "OpenAI", "type")
                try:
                    if event is not None:
                        await self.on_openai_event(event)
                except (KeyError, TypeError, ValueError) as exc:
                    self.log.warning("malformed %s ignored: %r", event["type"], exc)
            if self.openai_ready.is_set():  # not expired: OpenAI ended the session
                code = self.openai.close_code
                self.log.info("OpenAI closed the session (code %s): hanging up", code)
                return
            # The session hit OpenAI's time limit: a new one, and the caller stays.
            began = time.monotonic()
            if not await self.open_session():
                return
            ms, turns = (time.monotonic() - began) * 1000, len(self.history)
            self.log.info("session renewed in %.0f ms, %d turns replayed", ms, turns)

    async def on_openai_event(self, event: dict) -> None:
        kind = event["type"]
        if kind == "response.output_audio.delta":
            await self.play(event["item_id"], event["delta"])
        elif kind == "input_audio_buffer.speech_started":
            await self.interrupt()
        elif kind == "input_audio_buffer.speech_stopped":
            self.speech_stopped_at = time.monotonic()
        elif kind == "response.function_call_arguments.done":
            self.on_function_call(event["name"], event["call_id"], event["arguments"])
        elif kind == "conversation.item.input_audio_transcription.completed":
            self.remember("user", event["transcript"])
        elif kind == "response.output_audio_transcript.done":
            self.remember("assistant", event["transcript"])
        elif kind == "response.done":
            await self.send_mark()  # the reply's last audio
            if event["response"].get("status") == "failed":
                details = event["response"].get("status_details")
                self.log.warning("response failed: %s", details)
        elif kind == "error" and event["error"].get("code") == "session_expired":
            self.log.info("the session reached its time limit: renewing it")
            self.openai_ready.clear()  # caller audio waits for the new session
        elif kind == "error":
            error = event["error"]
            self.log.warning(
                "OpenAI error %s: %s", error.get("code"), error.get("message")
            )

    # -- Playback, marks and barge-in ------------------------------------------

    async def send_twilio(self, message: dict) -> None:
        await self.twilio.send_str(json.dumps(message))

    async def play(self, item_id: str, audio: str) -> None:
        """Send a piece of the agent's voice to the caller. It joins the newest
        chunk until that chunk is MARK_EVERY_MS long or the reply ends."""
        if item_id == self.cut_item:
            return  # the caller interrupted this reply: its late audio must not play
        if item_id != self.item_id:
            await self.send_mark()  # a new reply: the last one's audio has ended
            self.item_id, self.item_ms = item_id, 0.0
        if not self.unplayed:
            self.playing_since = self.stream_ms  # nothing queued: it plays from now
        end_ms = self.item_ms + audio_ms(audio)
        if self.mark_pending:  # the newest chunk is still open: extend it
            chunk = self.unplayed.pop()._replace(end_ms=end_ms)
        else:
            self.chunks += 1
            chunk = Chunk(str(self.chunks), item_id, self.item_ms, end_ms)
        self.unplayed.append(chunk)
        self.item_ms, self.mark_pending = end_ms, True
        self.played_out.clear()
        sid = self.stream_sid
        media = {"event": "media", "streamSid": sid, "media": {"payload": audio}}
        await self.send_twilio(media)
        if chunk.end_ms - chunk.start_ms >= MARK_EVERY_MS:
            await self.send_mark()
        if self.speech_stopped_at is not None:  # the first audio of a reply
            latency_ms = (time.monotonic() - self.speech_stopped_at) * 1000
            self.latencies_ms.append(latency_ms)
            self.speech_stopped_at = None
            self.log.info("reply latency %.0f ms", latency_ms)

    async def send_mark(self) -> None:
        """End the newest chunk with its mark: Twilio sends the mark back once the
        caller has heard all the audio before it."""
        if self.mark_pending:
            self.mark_pending = False
            mark = {"event": "mark", "streamSid": self.stream_sid}
            mark["mark"] = {"name": self.unplayed[-1].mark}
            await self.send_twilio(mark)

    def on_mark(self, name: str) -> None:
        """Twilio has played up to this mark. Marks flushed by a clear match
        nothing: interrupt() already forgot their chunks."""
        if self.unplayed and self.unplayed[0].mark == name:
            self.unplayed.popleft()
            self.playing_since = self.stream_ms
            if not self.unplayed:
                self.mark_pending = False  # was True only if a forged mark came early
                self.played_out.set()

    async def interrupt(self) -> None:
        """The caller spoke (or pressed a key): stop the agent's audio at once, and
        tell the model how much of its reply the caller actually heard."""
        self.cut_item = self.item_id  # if still generating, the server cancels it
        if not self.unplayed:
            return  # the reply had played to its end: nothing to cut
        self.barge_ins += 1
        # The oldest unplayed chunk is playing, since playing_since on the stream clock.
        playing = self.unplayed[0]
        heard_ms = playing.start_ms + max(0, self.stream_ms - self.playing_since)
        heard_ms = min(heard_ms, playing.end_ms)  # never past what was sent: an error
        cut = {chunk.item_id: 0 for chunk in self.unplayed}  # queued after: unheard
        cut[playing.item_id] = int(heard_ms)
        self.unplayed.clear()
        self.mark_pending = False
        self.played_out.set()
        await self.send_twilio({"event": "clear", "streamSid": self.stream_sid})
        for item_id, end_ms in cut.items():
            truncate = {"item_id": item_id, "content_index": 0, "audio_end_ms": end_ms}
            await self.send_openai({"type": "conversation.item.truncate", **truncate})
            self.log.info("barge-in: %s cut at %d ms", item_id, end_ms)

    async def on_keypress(self, digit: str) -> None:
        """A keypad press is a turn too: it interrupts, then the model answers."""
        self.log.info("caller pressed %s", digit)
        await self.interrupt()
        text = f"The caller pressed {digit} on the keypad."
        await self.send_openai(message_item("user", text))
        await self.send_openai({"type": "response.create"})

    # -- Tools and hanging up --------------------------------------------------

    def on_function_call(self, name: str, call_id: str, arguments: str) -> None:
        self.log.info("the model calls %s(%s)", name, arguments)
        if name == "end_call":
            self.start(self.end_call())
        else:  # in a task of its own, so the audio keeps flowing meanwhile
            self.start(self.run_tool(name, call_id, arguments))

    async def run_tool(self, name: str, call_id: str, arguments: str) -> None:
        try:
            if name not in TOOLS:
                raise LookupError(f"there is no tool named {name!r}")
            function, _ = TOOLS[name]
            kwargs = json.loads(arguments)
            if inspect.iscoroutinefunction(function):
                work = function(**kwargs)
            else:  # a plain function runs in a thread, so it cannot block the call
                work = asyncio.to_thread(function, **kwargs)
            result = await asyncio.wait_for(work, TOOL_TIMEOUT)
            output = result if isinstance(result, str) else json.dumps(result)
        except asyncio.TimeoutError:
            output = f"error: {name} took longer than {TOOL_TIMEOUT:g} s"
        except Exception as exc:  # a tool's bug must not end the call
            output = f"error: {name} failed: {type(exc).__name__}: {exc}"
        if output.startswith("error:"):
            self.log.warning("tool %s", output)
        item = {"type": "function_call_output", "call_id": call_id, "output": output}
        await self.send_openai({"type": "conversation.item.create", "item": item})
        await self.send_openai({"type": "response.create"})

    async def end_call(self) -> None:
        """The agent said goodbye: let the caller hear it to the end, then hang up."""
        queued_s = sum(chunk.end_ms - chunk.start_ms for chunk in self.unplayed) / 1000
        try:
            await asyncio.wait_for(self.played_out.wait(), queued_s + GOODBYE_GRACE)
        except asyncio.TimeoutError:
            self.log.warning("the goodbye's last mark never came back")
        self.log.info("the agent hung up")
        await self.twilio.close()

    # -- The conversation as text ----------------------------------------------

    def remember(self, role: str, text: str) -> None:
        """Log a turn, keep it for a renewed session, add it to the transcript."""
        self.log.info("%s: %s", "caller" if role == "user" else "agent", text)
        self.history.append((role, text))
        if self.transcript is None:
            return
        now = datetime.now(timezone.utc).isoformat()
        line = {"role": role, "text": text, "time": now}
        try:
            with self.transcript.open("a", encoding="utf-8") as file:
                file.write(json.dumps(line) + "\n")
        except OSError as exc:  # a full disk or a bad TRANSCRIPT_DIR must not end calls
            self.log.warning("transcript not written: %s", exc)

    def summary(self) -> str:
        seconds = time.monotonic() - self.started
        median = statistics.median(self.latencies_ms) if self.latencies_ms else 0
        return (
            f"call ended after {seconds:.0f} s: {len(self.latencies_ms)} turns, "
            f"median reply latency {median:.0f} ms, {self.barge_ins} barge-ins"
        )


# ----------------------------------------------------------------------------
# The application

CONFIG = web.AppKey("config", Config)
HTTP = web.AppKey("http", aiohttp.ClientSession)
CALLS = web.AppKey("calls", set)


async def media(request: web.Request) -> web.StreamResponse:
    """Twilio's Media Stream for one call."""
    url = public_base(request, websocket=True) + request.raw_path
    check_signature(request, url, {})
    twilio = web.WebSocketResponse(max_msg_size=MAX_TWILIO_MESSAGE)
    await twilio.prepare(request)
    call = Call(request.app, twilio)
    request.app[CALLS].add(call)
    try:
        await call.run()
    finally:
        request.app[CALLS].discard(call)
    return twilio


async def http_session(app: web.Application) -> AsyncIterator[None]:
    """One ClientSession for every OpenAI connection, closed with the app."""
    # limit=0: each call holds a connection for its whole life, and the default
    # pool of 100 would make call 101 wait. The timeout bounds each handshake, not
    # the socket's life.
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=CONNECT_TIMEOUT)
    app[HTTP] = aiohttp.ClientSession(connector=connector, timeout=timeout)
    yield
    await app[HTTP].close()


async def close_calls(app: web.Application) -> None:
    """On shutdown (SIGTERM, Ctrl-C) hang up every call, on both sides."""
    if app[CALLS]:
        log.info("shutting down: closing %d calls", len(app[CALLS]))
    await asyncio.gather(*(call.close() for call in list(app[CALLS])))


def make_app(config: Config) -> web.Application:
    if not config.twilio_auth_token:
        log.warning(
            "TWILIO_AUTH_TOKEN is not set: requests are NOT verified (dev only)"
        )
    app = web.Application()
    app[CONFIG] = config
    app[CALLS] = set()
    app.cleanup_ctx.append(http_session)
    app.on_shutdown.append(close_calls)
    app.router.add_post("/incoming", incoming)
    app.router.add_get("/media", media)
    return app


def main() -> None:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(message)s")
    config = Config.from_env(dict(os.environ))
    if not config.openai_api_key:
        sys.exit("OPENAI_API_KEY is not set: export your OpenAI API key first.")
    app = make_app(config)
    webhook = (config.public_url or "https://<your tunnel>") + "/incoming"
    log.info("listening on port %d, model %s", config.port, config.model)
    log.info("set your Twilio number's voice webhook to HTTP POST %s", webhook)
    web.run_app(app, port=config.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
