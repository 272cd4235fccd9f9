# A phone bridge: a Twilio call talks to an OpenAI Realtime voice agent.
#
# Twilio posts the call to /incoming. We open the call's OpenAI Realtime WebSocket
# at once (so the greeting is ready early) and answer with TwiML that opens a Media
# Stream (a WebSocket of 20 ms mu-law frames) to /media; then two tasks pump the
# two directions. Both sides speak G.711 mu-law at 8 kHz, so the audio passes
# through untouched.
#
# What the popular samples get wrong is barge-in. The model sends audio much
# faster than the caller hears it, so when the caller interrupts, the model must
# be told how much of its reply was *heard*, not sent, or it believes it said
# things the caller never heard. Twilio's marks and stream clock tell us (see
# Call.interrupt).
#
# Every wait is bounded: a dead or stalled peer ends its call, never hangs it with
# an OpenAI session still billed.
#
# Run it:        OPENAI_API_KEY=sk-... python bridge.py
# Talk to it:    open http://localhost:8080/phone   (a browser plays Twilio)
# Place a call:  python bridge.py call +15551234567   (with the Twilio settings)
# More cores:    gunicorn 'bridge:create_app()' --worker-class aiohttp.GunicornWebWorker
# Settings are environment variables, each a field of Config below.

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import inspect
import json
import logging
import os
import re
import resource
import signal
import statistics
import sys
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote
from xml.sax.saxutils import quoteattr
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web

log = logging.getLogger("bridge")

# ----------------------------------------------------------------------------
# Configuration

OPENAI_URL = "wss://api.openai.com/v1/realtime"
TWILIO_API = "https://api.twilio.com"
PHONE_NUMBER = r"\+[1-9][0-9]{1,14}"  # E.164: + and up to 15 digits
VOICES = "alloy|ash|ballad|coral|echo|sage|shimmer|verse|marin|cedar"
DEFAULT_INSTRUCTIONS = (
    "You are the friendly receptionist of a small business, answering the phone. "
    "Greet the caller warmly and ask how you can help. Keep every reply short: one "
    "or two spoken sentences. When the caller is done, say goodbye, then call end_call."
)


def setting(default: Any, allowed: str | range = ".+", says: str = "") -> Any:
    """A Config field, read from the environment variable of its name in capitals."""
    # `allowed` is a regular expression the whole value must match, or for a whole
    # number a range; `says` tells a person what is allowed, when the pattern cannot.
    return field(default=default, metadata={"allowed": allowed, "says": says})


@dataclass(frozen=True)
class Config:
    openai_api_key: str = setting("")
    openai_realtime_url: str = setting(OPENAI_URL, r"wss?://\S+", "wss:// or ws:// URL")
    openai_model: str = setting("gpt-realtime-2.1")
    port: int = setting(8080, range(1, 65536))
    # The https address Twilio calls (a tunnel's); else the Host header's.
    public_url: str = setting("", r"https://[\w.-]+(:\d+)?", "https:// and a host")
    twilio_auth_token: str = setting("")  # set: requests must carry a signature
    voice: str = setting("marin", VOICES)
    instructions: str = setting(DEFAULT_INSTRUCTIONS)
    transcript_dir: str = setting("")  # set: one JSON Lines transcript per call
    turn_detection: str = setting("server_vad", "server_vad|semantic_vad")
    # A handset is a close-talking microphone; a speakerphone is far_field.
    noise_reduction: str = setting("near_field", "near_field|far_field|off")
    idle_timeout_seconds: int = setting(0, range(3601))  # 0: never speaks up
    transcribe_model: str = setting("gpt-4o-mini-transcribe")
    language: str = setting("", "[a-z]{2}", "an ISO-639-1 code, e.g. en")
    # Twilio's REST API: to place calls, transfer them and record them.
    twilio_account_sid: str = setting("", "AC[0-9a-f]{32}", "AC and 32 hex digits")
    twilio_number: str = setting("", PHONE_NUMBER, "+ and up to 15 digits")
    twilio_api_url: str = setting(TWILIO_API, r"https?://[^/\s]+", "a scheme and host")
    transfer_number: str = setting("", PHONE_NUMBER, "+ and up to 15 digits")
    record_calls: bool = setting(False, "1|true|0|false")
    # SIGTERM lets live calls end on their own for this long (0: hangs up at once).
    drain_seconds: int = setting(0, range(86401))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        """The settings in the environment, or ValueError: a line per bad one."""
        values, problems = {}, []
        for item in fields(cls):
            name = item.name.upper()
            value = env.get(name, "").strip()
            allowed, says = item.metadata["allowed"], item.metadata["says"]
            if isinstance(allowed, range):
                ok = re.fullmatch("[0-9]{1,6}", value) and int(value) in allowed
                says = f"a whole number from {allowed.start} to {allowed.stop - 1}"
            else:
                ok = re.fullmatch(allowed, value)
            if value and not ok:
                says = says or allowed.replace("|", " or ")
                problems.append(f"{name}={value!r} is not allowed: {says}")
            elif value:  # a bool is a flag, 1 or true; an int or a str converts
                kind = type(item.default)
                converted = value in ("1", "true") if kind is bool else kind(value)
                values[item.name] = converted
        config = cls(**values)
        if config.idle_timeout_seconds and config.turn_detection != "server_vad":
            problems.append("IDLE_TIMEOUT_SECONDS works only with server_vad")
        rest = config.twilio_account_sid and config.twilio_auth_token
        credentials = "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"
        for name in ("TRANSFER_NUMBER", "RECORD_CALLS"):
            if getattr(config, name.lower()) and not rest:
                problems.append(f"{name} needs {credentials}")
        if problems:
            raise ValueError("\n".join(problems))
        return config


MAX_TWILIO_MESSAGE = 64 * 1024  # Twilio's frames are ~300 bytes, `start` a few KB
MAX_OPENAI_MESSAGE = 16 * 1024 * 1024  # a long transcript can pass aiohttp's 4 MiB
CONNECT_TIMEOUT = 10.0  # seconds for the OpenAI handshake, and for Twilio's `start`
BODY_TIMEOUT = 5.0  # seconds for a webhook's body: a client that never ends it waits
# Twilio sends a frame every 20 ms for the whole call, so a silent stream is a dead
# one (a lost TCP path sends no FIN): no message for this long ends the call.
TWILIO_SILENCE = 10.0
SEND_TIMEOUT = 5.0  # seconds a send may wait on a peer that stopped reading
WATCH_EVERY = 1.0  # seconds between checks of those two bounds
CLOSE_TIMEOUT = 2.0  # seconds for a peer to answer our close before we drop it
OPENAI_HEARTBEAT = 20.0  # seconds between pings: OpenAI is legitimately quiet
# A call's session opens at its webhook, so the greeting is ready when the stream
# starts. STREAM_WAIT bounds the wait for the stream (then its proof expires too):
# a caller who hangs up while it rings leaves no session open for long.
STREAM_WAIT = 15.0
EARLY_SESSIONS = 100  # sessions opened ahead of their streams at once, at most
HELD_EVENTS = 500  # events for OpenAI held while a session renews: 10 s of audio
WARNINGS_SHOWN = 3  # warnings of one kind a call logs; the rest are counted
DRAIN_REPORT = 60.0  # seconds between the log lines of a drain
TOOL_TIMEOUT = 10.0  # seconds a tool may run before the model is told it failed
REST_TIMEOUT = 10.0  # seconds for an answer from Twilio's REST API
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


# These two are declared here for the model, and answered by the call itself.
@tool("Hang up. Call it right after saying goodbye.", {"type": "object"})
def end_call() -> None: ...  # Call.end_call


# Declared only with TRANSFER_NUMBER set. It takes no number: a caller who talks
# the model into "transfer me to +1900..." must not choose what you pay to dial.
@tool("Hand the call to a person. First tell the caller you will.", {"type": "object"})
def transfer_call() -> None: ...  # Call.transfer


def instructions_for(config: Config, call: dict[str, str]) -> str:
    """The agent's instructions for one call: edit this to give each its own."""
    # `call` holds what Twilio said of the call (From, To, Direction), checked by
    # call_context(). Here is the place to look the caller up in your own system.
    # Caller ID can be spoofed: use it to be helpful, never as proof of identity.
    if call.get("Direction", "").startswith("outbound") and "To" in call:
        return f"{config.instructions}\nYou placed this call to {call['To']}."
    if "From" in call and "To" in call:
        about = f"The caller's number is {call['From']}; they called {call['To']}."
        return f"{config.instructions}\n{about}"
    return config.instructions


def call_context(fields: Mapping) -> dict[str, str]:
    """The call's From, To and Direction; a missing or odd value is left out."""
    # These reach the model's instructions, so only what a number, a SIP address or
    # a client name looks like, and short.
    values = {name: fields.get(name) for name in ("From", "To", "Direction")}
    fits = re.compile(r"[\w+:@.*#-]{1,64}").fullmatch
    return {k: v for k, v in values.items() if isinstance(v, str) and fits(v)}


def session_update(config: Config, instructions: str) -> dict:
    """The first event of every OpenAI session: mu-law both ways, turn detection."""
    if config.turn_detection == "server_vad":
        vad = {"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 500}
        if config.idle_timeout_seconds:  # the agent speaks up after this silence
            vad["idle_timeout_ms"] = config.idle_timeout_seconds * 1000
    else:
        vad = {"type": "semantic_vad"}
    vad |= {"interrupt_response": True, "create_response": True}
    transcription = {"model": config.transcribe_model}
    if config.language:
        transcription["language"] = config.language
    noise = {"type": config.noise_reduction}
    noise = None if config.noise_reduction == "off" else noise
    audio_in = {"format": {"type": "audio/pcmu"}, "turn_detection": vad}
    audio_in |= {"noise_reduction": noise, "transcription": transcription}
    audio_out = {"format": {"type": "audio/pcmu"}, "voice": config.voice}
    session = {"type": "realtime", "instructions": instructions}
    session["audio"] = {"input": audio_in, "output": audio_out}
    left_out = set() if config.transfer_number else {"transfer_call"}
    session["tools"] = [d for name, (_, d) in TOOLS.items() if name not in left_out]
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


def call_proof(token: str, call_sid: str, expires: int = 0) -> str:
    # The stream's proof that this bridge answered its call's webhook: the CallSid and
    # an expiry signed with the auth token. A handshake's signature covers only the URL,
    # the same for every call, so a captured one could be replayed; a proof cannot be
    # reused for another call or later, and any instance can check it.
    expires = expires or int(time.time() + STREAM_WAIT)
    signed = f"{call_sid}:{expires}".encode()
    return f"{expires}:{hmac.new(token.encode(), signed, hashlib.sha256).hexdigest()}"


def proof_ok(token: str, call_sid: str, proof: object) -> bool:
    expires, _, _ = str(proof).partition(":")
    if not expires.isdigit() or int(expires) < time.time():
        return False
    expected = call_proof(token, call_sid, int(expires))
    return hmac.compare_digest(expected.encode(), str(proof).encode())


async def incoming(request: web.Request) -> web.Response:
    """Twilio's voice webhook: answer with TwiML that streams the call to /media."""
    try:  # aiohttp would wait for a body that never ends
        async with asyncio.timeout(BODY_TIMEOUT):
            form = await request.post()
    except TimeoutError:
        log.warning("POST /incoming from %s: no body in time", request.remote)
        timed_out = web.Response(status=408, text="request timeout")
        timed_out.force_close()
        return timed_out
    check_signature(request, public_base(request) + request.raw_path, dict(form))
    if request.app[DRAIN].until is not None:  # Twilio tries the fallback URL
        raise web.HTTPServiceUnavailable(text="draining: no new calls")
    call_sid = str(form.get("CallSid", ""))
    stream_url = public_base(request, websocket=True) + "/media"
    log.info("[%s] incoming call, streamed to %s", printable(call_sid), stream_url)
    calls, token = request.app[CALLS], request.app[CONFIG].twilio_auth_token
    context = call_context(form)
    waiting = sum(call.twilio is None for call in calls.values())
    if call_sid and call_sid not in calls and waiting < EARLY_SESSIONS:
        begin_call(request.app, call_sid, context)
    parameters = dict(context)
    if token:
        parameters["proof"] = call_proof(token, call_sid)
    # No query string on the stream URL: Twilio drops it, so values for the stream
    # travel as <Parameter>s. Nothing after <Connect>: when we close, the call ends.
    stream = "".join(
        f"<Parameter name={quoteattr(k)} value={quoteattr(v)}/>"
        for k, v in parameters.items()
    )
    stream = f"<Stream url={quoteattr(stream_url)}>{stream}</Stream>"
    twiml = f"<Response><Connect>{stream}</Connect></Response>"
    return web.Response(text=twiml, content_type="text/xml")


# ----------------------------------------------------------------------------
# Twilio's REST API: to place calls, transfer them and record them


class TwilioError(Exception):
    """Twilio's REST API refused a request, or did not answer: one line says why."""


async def twilio_rest(
    http: aiohttp.ClientSession, config: Config, path: str, form: dict
) -> dict:
    """POST to Twilio's REST API, form-encoded with basic auth; its JSON answer."""
    account = config.twilio_account_sid
    url = f"{config.twilio_api_url}/2010-04-01/Accounts/{account}/{path}"
    login = base64.b64encode(f"{account}:{config.twilio_auth_token}".encode())
    auth = {"Authorization": f"Basic {login.decode()}"}  # HTTP basic auth
    timeout = aiohttp.ClientTimeout(total=REST_TIMEOUT)
    try:
        async with http.post(url, data=form, headers=auth, timeout=timeout) as response:
            answer = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise TwilioError(f"Twilio's API did not answer: {exc!r}") from None
    if not isinstance(answer, dict) or response.status >= 400:
        error = answer if isinstance(answer, dict) else {}  # code, message, more_info
        code, message = error.get("code"), error.get("message")
        raise TwilioError(f"Twilio refused (HTTP {response.status}): {code} {message}")
    return answer


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


def printable(value: object, limit: int = 80) -> str:
    # Text from a peer, fit for one log line: cut short, and control characters escaped,
    # so a newline in a CallSid cannot forge a line of its own.
    text = str(value)
    text = text[:limit] + ("..." if len(text) > limit else "")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def plural(count: int, noun: str) -> str:
    """'1 call', '2 calls': log lines that read as English."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


class CallLog(logging.LoggerAdapter):
    # Starts every line with the call's id, to follow one call in a busy log, and logs
    # only the first few warnings of a kind: a peer could repeat one forever.

    def __init__(self, call_sid: str) -> None:
        super().__init__(log, {"call": printable(call_sid, 40)})
        self.warnings: Counter[str] = Counter()

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['call']}] {msg}", kwargs  # type: ignore[index]

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.warnings[msg] += 1
        if self.warnings[msg] <= WARNINGS_SHOWN:
            super().warning(msg, *args, **kwargs)


def parse(msg: aiohttp.WSMessage, side: str, key: str, log: CallLog) -> dict | None:
    """A JSON object with a string `key`, or None (logged) for anything else."""
    try:
        event = json.loads(msg.data) if msg.type == aiohttp.WSMsgType.TEXT else None
    except ValueError:
        event = None
    if isinstance(event, dict) and isinstance(event.get(key), str):
        return event
    what = msg.data if msg.type == aiohttp.WSMsgType.ERROR else msg.type.name
    log.warning("%s sent a message that is not an event (%s)", side, printable(what))
    return None


async def close_socket(socket: Any, log: CallLog) -> None:
    # Close a WebSocket, politely if the peer answers within CLOSE_TIMEOUT. When the
    # close is cancelled, aiohttp drops the connection, so the socket is gone.
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await socket.close()
    except TimeoutError:
        log.info("a peer did not answer our close: connection dropped")


KEYPAD = set("0123456789*#ABCD")  # what a dtmf digit can be


class Call:
    """One phone call: its two sockets, and what the two pumps share."""

    def __init__(self, app: web.Application, call_sid: str, context: dict) -> None:
        self.app = app
        self.config: Config = app[CONFIG]
        self.call_sid = call_sid
        self.instructions = instructions_for(self.config, context)
        self.log = CallLog(call_sid)
        self.twilio: web.WebSocketResponse | None = None  # until the stream starts
        self.stream_sid = ""
        self.streaming = asyncio.Event()  # set when the stream starts
        self.task: asyncio.Task | None = None  # run(), the call's whole life
        self.openai: aiohttp.ClientWebSocketResponse | None = None
        self.openai_ready = False  # False while the session opens or renews
        self.held: deque[dict] = deque()  # for OpenAI, while it is not ready
        self.tasks: set[asyncio.Task] = set()  # the pumps, tool runs, the hang-up
        self.heard_at = 0.0  # when Twilio's last message came
        self.sending: dict[Any, float] = {}  # socket -> when a send to it began
        self.transcript: Path | None = None
        if self.config.transcript_dir:
            name = "".join(c for c in call_sid if c.isalnum()) or "call"
            self.transcript = Path(self.config.transcript_dir) / f"{name}.jsonl"
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
        self.turns = 0  # the caller's: each end of speech, each key pressed
        self.latencies_ms: list[float] = []
        self.barge_ins = 0

    def attach(self, twilio: web.WebSocketResponse, start: dict) -> None:
        """The call's Media Stream has started: audio can flow both ways."""
        self.twilio, self.stream_sid = twilio, start["streamSid"]
        self.heard_at = time.monotonic()  # silence counts from here, not the webhook
        self.log.info("stream %s started", printable(self.stream_sid))
        self.streaming.set()
        if self.config.record_calls:
            self.start(self.record())

    async def run(self) -> None:
        """The call's whole life: its session, the stream, both pumps, the hang-up."""
        # Started by the webhook, the session opens and the greeting is asked for
        # while Twilio fetches the TwiML and opens the stream. Greeting audio that
        # comes before the stream waits in the OpenAI socket (aiohttp stops reading
        # at its buffer's limit), so it plays, and counts as played, from `start`.
        try:
            if not await self.open_session():
                return
            await self.send_openai({"type": "response.create"})  # the agent greets
            try:
                await asyncio.wait_for(self.streaming.wait(), STREAM_WAIT)
            except TimeoutError:
                self.log.warning("no stream in %g s: session closed", STREAM_WAIT)
                return
            pumps = [self.pump_twilio(), self.pump_openai(), self.watch()]
            tasks = [self.start(pump) for pump in pumps]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await self.close()
            self.log.info(self.summary())
            del self.app[CALLS][self.call_sid]

    async def close(self) -> None:
        """End the call on both sides. Safe to call more than once."""
        for task in list(self.tasks):
            task.cancel()
        for socket in (self.openai, self.twilio):
            if socket is not None:
                await close_socket(socket, self.log)

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

    async def send(self, socket: Any, message: dict) -> None:
        # A send waits while the peer is not reading. watch() bounds that wait.
        self.sending[socket] = time.monotonic()
        await socket.send_str(json.dumps(message))
        self.sending.pop(socket, None)

    async def watch(self) -> None:
        """End the call when Twilio falls silent or a peer stops reading."""
        # A stuck send would hold up its pump for good (the caller's `stop` unread).
        # One check a second costs far less than a timer on every message: those
        # made the bridge cost 1.4 times a bare forwarder.
        while True:
            await asyncio.sleep(WATCH_EVERY)
            now = time.monotonic()
            stuck = [s for s, t in self.sending.items() if now - t > SEND_TIMEOUT]
            if now - self.heard_at > TWILIO_SILENCE:
                why = f"no message from Twilio for {TWILIO_SILENCE:g} s"
            elif stuck:
                side = "Twilio" if stuck[0] is self.twilio else "OpenAI"
                why = f"{side} stopped reading for {SEND_TIMEOUT:g} s"
            else:
                continue
            self.log.warning("%s: hanging up", why)
            return

    # -- From Twilio -----------------------------------------------------------

    async def pump_twilio(self) -> None:
        async for msg in self.twilio:
            self.heard_at = time.monotonic()
            if await self.handle(msg, "Twilio", "event", self.on_twilio_event):
                return
        self.log.info("Twilio socket closed")

    async def handle(self, msg: Any, side: str, key: str, act: Callable) -> Any:
        """Parse one message and act on it; one that is malformed is skipped."""
        event = parse(msg, side, key, self.log)
        try:
            return event is not None and await act(event)
        except (KeyError, TypeError, ValueError) as exc:
            kind, why = printable(event[key]), printable(repr(exc))
            self.log.warning("malformed %s %s ignored: %s", side, kind, why)

    async def on_twilio_event(self, event: dict) -> bool:
        """Act on one Twilio message; True when the stream has stopped."""
        kind = event["event"]
        if kind == "media":
            media = event["media"]
            if not isinstance(media["payload"], str):
                raise TypeError("payload is not text")
            self.stream_ms = int(media["timestamp"])
            append = {"type": "input_audio_buffer.append", "audio": media["payload"]}
            await self.send_openai(append)
        elif kind == "stop":
            self.log.info("Twilio stopped the stream: the caller hung up")
            return True
        elif kind == "mark":
            self.on_mark(event["mark"]["name"])
        elif kind == "dtmf" and event["dtmf"]["digit"] in KEYPAD:
            await self.on_keypress(event["dtmf"]["digit"])
        elif kind == "dtmf":
            digit = printable(event["dtmf"]["digit"])
            self.log.warning("keypad digit %s ignored: not 0-9, *, # or A-D", digit)
        elif kind == "start":
            self.log.warning("second start message ignored")
        elif kind != "connected":
            self.log.warning("unknown Twilio event %s ignored", printable(kind))
        return False

    # -- The OpenAI session ----------------------------------------------------

    async def open_session(self) -> bool:
        # Open and configure an OpenAI session, with the conversation so far and what
        # the caller said while it opened.
        url = f"{self.config.openai_realtime_url}?model={self.config.openai_model}"
        options = {"heartbeat": OPENAI_HEARTBEAT, "max_msg_size": MAX_OPENAI_MESSAGE}
        options["headers"] = {"Authorization": f"Bearer {self.config.openai_api_key}"}
        try:
            self.openai = await self.app[HTTP].ws_connect(url, **options)
        except (aiohttp.ClientError, TimeoutError) as exc:
            refused = isinstance(exc, aiohttp.WSServerHandshakeError)
            why = f"HTTP {exc.status}" if refused else repr(exc)
            self.log.error("could not open the OpenAI session: %s", why)
            return False
        await self.send(self.openai, session_update(self.config, self.instructions))
        for role, text in self.history:
            await self.send(self.openai, message_item(role, text))
        while self.held:
            await self.send(self.openai, self.held.popleft())
        self.openai_ready = True
        return True

    async def send_openai(self, event: dict) -> None:
        if self.openai_ready:
            await self.send(self.openai, event)
        elif len(self.held) < HELD_EVENTS:  # a renewal: the new session gets it
            self.held.append(event)
        else:  # never block the Twilio pump: it must still hear `stop`
            self.log.warning("the session is still renewing: caller audio dropped")

    async def pump_openai(self) -> None:
        while True:
            async for msg in self.openai:
                await self.handle(msg, "OpenAI", "type", self.on_openai_event)
            if self.openai_ready:  # not expired: OpenAI ended the session
                code = self.openai.close_code
                self.log.info("OpenAI closed the session (code %s): hanging up", code)
                return
            # The session hit OpenAI's time limit: a new one, and the caller stays.
            began = time.monotonic()
            if not await self.open_session():
                return
            ms, turns = (time.monotonic() - began) * 1000, len(self.history)
            self.log.info("session renewed in %.0f ms, turns replayed: %d", ms, turns)

    async def on_openai_event(self, event: dict) -> None:
        kind = event["type"]
        if kind == "response.output_audio.delta":
            await self.play(event["item_id"], event["delta"])
        elif kind == "input_audio_buffer.speech_started":
            await self.interrupt()
        elif kind == "input_audio_buffer.speech_stopped":
            self.speech_stopped_at = time.monotonic()
            self.turns += 1
        elif kind == "input_audio_buffer.timeout_triggered":
            self.log.info("the caller is silent: the agent speaks up")
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
                self.log.warning("response failed: %s", printable(details, 300))
        elif kind == "error" and event["error"].get("code") == "session_expired":
            self.log.info("the session reached its time limit: renewing it")
            self.openai_ready = False  # caller audio is held for the new session
            await close_socket(self.openai, self.log)  # OpenAI's may never come
        elif kind == "error":
            code = printable(event["error"].get("code"))
            message = printable(event["error"].get("message"), 300)
            self.log.warning("OpenAI error %s: %s", code, message)

    # -- Playback, marks and barge-in ------------------------------------------

    async def send_twilio(self, message: dict) -> None:
        await self.send(self.twilio, message)

    async def play(self, item_id: str, audio: str) -> None:
        # Send a piece of the agent's voice to the caller. It joins the newest chunk
        # until that chunk is MARK_EVERY_MS long or the reply ends.
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
        # End the newest chunk with its mark: Twilio sends the mark back once the caller
        # has heard all the audio before it.
        if self.mark_pending:
            self.mark_pending = False
            mark = {"event": "mark", "streamSid": self.stream_sid}
            mark["mark"] = {"name": self.unplayed[-1].mark}
            await self.send_twilio(mark)

    def on_mark(self, name: str) -> None:
        # Twilio has played up to this mark. Marks flushed by a clear match nothing:
        # interrupt() already forgot their chunks.
        if self.unplayed and self.unplayed[0].mark == name:
            self.unplayed.popleft()
            self.playing_since = self.stream_ms
            if not self.unplayed:
                self.mark_pending = False  # was True only if a forged mark came early
                self.played_out.set()

    async def interrupt(self) -> None:
        # The caller spoke (or pressed a key): stop the agent's audio at once, and tell
        # the model how much of its reply the caller actually heard.
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
        self.turns += 1
        await self.interrupt()
        text = f"The caller pressed {digit} on the keypad."
        await self.send_openai(message_item("user", text))
        await self.send_openai({"type": "response.create"})

    # -- Tools and hanging up --------------------------------------------------

    def on_function_call(self, name: str, call_id: str, arguments: str) -> None:
        self.log.info("the model calls %s(%s)", printable(name), printable(arguments))
        if name == "end_call":
            self.start(self.end_call())
        elif name == "transfer_call" and self.config.transfer_number:
            self.start(self.transfer(call_id))  # its arguments are never read
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
        except TimeoutError:
            output = f"error: {name} took longer than {TOOL_TIMEOUT:g} s"
        except Exception as exc:  # a tool's bug must not end the call
            output = f"error: {name} failed: {type(exc).__name__}: {exc}"
        await self.answer(call_id, output)

    async def answer(self, call_id: str, output: str) -> None:
        """Give the model a function call's output, and let it speak again."""
        if output.startswith("error:"):
            self.log.warning("tool %s", output)
        item = {"type": "function_call_output", "call_id": call_id, "output": output}
        await self.send_openai({"type": "conversation.item.create", "item": item})
        await self.send_openai({"type": "response.create"})

    async def twilio_rest(self, path: str, form: dict) -> dict:
        """POST to this call's resource in Twilio's REST API (`path` after its id)."""
        call = f"Calls/{quote(self.call_sid, safe='')}{path}"
        return await twilio_rest(self.app[HTTP], self.config, call, form)

    async def finish_speaking(self) -> None:
        """Wait until the caller has heard the agent's last words (bounded)."""
        queued_s = sum(chunk.end_ms - chunk.start_ms for chunk in self.unplayed) / 1000
        try:
            await asyncio.wait_for(self.played_out.wait(), queued_s + GOODBYE_GRACE)
        except TimeoutError:
            self.log.warning("the last mark never came back: going on")

    async def end_call(self) -> None:
        """The agent said goodbye: let the caller hear it to the end, then hang up."""
        await self.finish_speaking()
        self.log.info("the agent hung up")
        await close_socket(self.twilio, self.log)

    async def transfer(self, call_id: str) -> None:
        """Once the caller has heard the agent say so, dial TRANSFER_NUMBER."""
        # Twilio then leaves our TwiML: it stops the stream, and the call ends here.
        await self.finish_speaking()
        twiml = f"<Response><Dial>{self.config.transfer_number}</Dial></Response>"
        try:
            await self.twilio_rest(".json", {"Twiml": twiml})
            self.log.info("transferred to %s", self.config.transfer_number)
        except TwilioError as exc:  # the model apologises; the call goes on
            await self.answer(call_id, f"error: the transfer failed: {exc}")

    async def record(self) -> None:
        """Ask Twilio to record the call, caller and agent on their own channels."""
        try:
            form = {"RecordingChannels": "dual"}
            answer = await self.twilio_rest("/Recordings.json", form)
            self.log.info("recording %s", printable(answer.get("sid")))
        except TwilioError as exc:
            self.log.warning("not recorded: %s", exc)

    # -- The conversation as text ----------------------------------------------

    def remember(self, role: str, text: str) -> None:
        """Log a turn, keep it for a renewed session, add it to the transcript."""
        speaker = "caller" if role == "user" else "agent"
        self.log.info("%s: %s", speaker, printable(text, 1000))
        self.history.append((role, text))
        if self.transcript is None:
            return
        now = datetime.now(UTC).isoformat()
        line = {"role": role, "text": text, "time": now}
        try:
            with self.transcript.open("a", encoding="utf-8") as file:
                file.write(json.dumps(line) + "\n")
        except OSError as exc:  # a full disk or a bad TRANSCRIPT_DIR must not end calls
            self.log.warning("transcript not written: %s", exc)

    def summary(self) -> str:
        seconds = time.monotonic() - self.started
        median = statistics.median(self.latencies_ms) if self.latencies_ms else None
        hidden = sum(max(0, n - WARNINGS_SHOWN) for n in self.log.warnings.values())
        return (
            f"call ended after {seconds:.0f} s: {plural(self.turns, 'turn')}, "
            + (f"median reply latency {median:.0f} ms, " if median is not None else "")
            + plural(self.barge_ins, "barge-in")
            + (f", {plural(hidden, 'repeated warning')} not shown" if hidden else "")
        )


# ----------------------------------------------------------------------------
# The application


class Drain:
    """A SIGTERM's drain: from its start the bridge takes no new calls, and at
    `until` it hangs up the calls left (a second signal brings that forward)."""

    until: float | None = None  # loop time; None while the bridge takes calls


CONFIG = web.AppKey("config", Config)
HTTP = web.AppKey("http", aiohttp.ClientSession)
CALLS = web.AppKey("calls", dict)  # CallSid -> Call
DRAIN = web.AppKey("drain", Drain)


async def stream_start(twilio: web.WebSocketResponse) -> dict | None:
    """Twilio's `start` message, or None (logged) if none comes in time."""
    log = CallLog("new stream")
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            async for msg in twilio:
                event = parse(msg, "Twilio", "event", log)
                if event is None or event["event"] == "connected":
                    continue
                if event["event"] != "start":
                    log.warning("%s before start ignored", printable(event["event"]))
                elif not usable_start(event.get("start")):
                    log.warning("malformed Twilio start ignored")
                else:
                    return event["start"]
    except TimeoutError:
        pass
    log.warning("no start message from Twilio")
    return None


def usable_start(start: object) -> bool:
    """A `start` with both ids as text, and its parameters (if any) an object."""
    ids_ok = isinstance(start, dict) and all(
        isinstance(start.get(key), str) and start[key]
        for key in ("streamSid", "callSid")
    )
    return ids_ok and isinstance(start.get("customParameters", {}), dict)


async def media(request: web.Request) -> web.StreamResponse:
    # Twilio's Media Stream for one call. No OpenAI session is opened before its `start`
    # proves (with signatures on) that our webhook answered this call: an open socket
    # alone, or a replayed handshake, must cost nothing.
    url = public_base(request, websocket=True) + request.raw_path
    check_signature(request, url, {})
    twilio = web.WebSocketResponse(max_msg_size=MAX_TWILIO_MESSAGE)
    await twilio.prepare(request)
    calls, token = request.app[CALLS], request.app[CONFIG].twilio_auth_token
    start = await stream_start(twilio)
    call_sid = start["callSid"] if start else ""
    parameters = start.get("customParameters", {}) if start else {}
    call, stream_log = calls.get(call_sid), CallLog(call_sid or "new stream")
    if start is None:
        pass
    elif token and not proof_ok(token, call_sid, parameters.get("proof")):
        stream_log.warning("stream refused: no valid proof")
    elif call is not None and call.twilio is not None:
        stream_log.warning("a second stream for the call refused")
    else:  # no session yet if another instance, or a restart, answered the webhook
        call = call or begin_call(request.app, call_sid, call_context(parameters))
        call.attach(twilio, start)
        await asyncio.wait([call.task])
    await close_socket(twilio, stream_log)
    return twilio


def begin_call(app: web.Application, call_sid: str, context: dict) -> Call:
    """A call's life begins: it opens its session and greets, and waits for its
    stream."""
    call = app[CALLS][call_sid] = Call(app, call_sid, context)
    call.task = asyncio.create_task(call.run())
    return call


@web.middleware
async def log_wrong_requests(request: web.Request, handler: Callable) -> Any:
    """Log what aiohttp would refuse silently: a webhook at the wrong path or method."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        what = f"{request.method} {printable(request.path)}"
        log.warning("%s: %s (the webhook is POST /incoming)", what, exc.reason)
        raise


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


async def health(request: web.Request) -> web.Response:
    """For a load balancer: 200 while the bridge takes calls, 503 while it drains."""
    calls, draining = len(request.app[CALLS]), request.app[DRAIN].until is not None
    status = {"status": "draining" if draining else "ok", "calls": calls}
    return web.json_response(status, status=503 if draining else 200)


async def phone(request: web.Request) -> web.Response:
    """A phone in the browser (PHONE_PAGE): it plays Twilio, so no number is needed."""
    return web.Response(text=PHONE_PAGE, content_type="text/html")


async def drain(app: web.Application) -> None:
    """Take no new calls, and let the live ones end on their own, up to the drain's
    end (DRAIN_SECONDS from its start)."""
    loop, calls = asyncio.get_running_loop(), app[CALLS]
    seconds = app[CONFIG].drain_seconds
    if app[DRAIN].until is None:  # not begun yet: begin it
        app[DRAIN].until = loop.time() + seconds
        if seconds:
            log.info("draining: %s for up to %d s", plural(len(calls), "call"), seconds)
    report = loop.time() + DRAIN_REPORT
    while calls and loop.time() < app[DRAIN].until:
        if loop.time() >= report:
            log.info("draining: %s left", plural(len(calls), "call"))
            report += DRAIN_REPORT
        await asyncio.sleep(0.1)


async def close_calls(app: web.Application) -> None:
    """On shutdown, once the drain is over, hang up every call on both sides."""
    await drain(app)  # under gunicorn, its worker's shutdown is the drain
    if app[CALLS]:
        log.info("shutting down: closing %s", plural(len(app[CALLS]), "call"))
    tasks = [call.task for call in app[CALLS].values()]
    for task in tasks:
        task.cancel()  # run() closes both sides on its way out
    await asyncio.gather(*tasks, return_exceptions=True)
    log.info("all calls ended")


async def quiet_accept_errors(app: web.Application) -> None:
    # Out of file descriptors, asyncio logs a traceback each time it retries accept()
    # (every second): one warning line says it better.

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if context.get("message") == "socket.accept() out of system resource":
            log.warning("no file descriptor left: %s", context["exception"])
        else:
            loop.default_exception_handler(context)

    asyncio.get_running_loop().set_exception_handler(handler)


def raise_file_limit() -> None:
    # Each call holds two sockets, and the usual soft limit of 1024 open files would
    # refuse callers long before the hard limit does.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    except (ValueError, OSError):  # an unlimited hard limit cannot be the soft one
        pass
    log.info("open files limit %d: room for about %d calls", soft, (soft - 20) // 2)


def make_app(config: Config) -> web.Application:
    if not config.twilio_auth_token:
        log.warning("TWILIO_AUTH_TOKEN is not set: requests are NOT verified (dev)")
    # lingering_time=0: a request whose body never came is closed at once, not
    # read for 10 s more.
    closing = {"lingering_time": 0}
    app = web.Application(middlewares=[log_wrong_requests], handler_args=closing)
    app[CONFIG] = config
    app[CALLS] = {}
    app[DRAIN] = Drain()
    app.cleanup_ctx.append(http_session)
    app.on_startup.append(quiet_accept_errors)
    app.on_shutdown.append(close_calls)
    app.router.add_post("/incoming", incoming)
    app.router.add_get("/media", media)
    app.router.add_get("/health", health)
    if not config.twilio_auth_token:  # unsigned streams are taken: a dev box
        app.router.add_get("/phone", phone)
    return app


def create_app() -> web.Application:
    """The app, set up from the environment. It serves `python bridge.py`, and
    gunicorn: gunicorn 'bridge:create_app()' --worker-class aiohttp.GunicornWebWorker"""
    config = settings()
    if not config.openai_api_key:
        sys.exit("OPENAI_API_KEY is not set: export your OpenAI API key first.")
    try:  # now, so that no turn's transcript fails for want of it
        if config.transcript_dir:
            Path(config.transcript_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        sys.exit(f"TRANSCRIPT_DIR={config.transcript_dir!r} cannot be made: {exc}")
    raise_file_limit()
    return make_app(config)


async def serve(app: web.Application) -> None:
    """Serve until a signal: SIGTERM drains first, Ctrl-C or a second signal not."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, port=app[CONFIG].port).start()
    signalled, loop = asyncio.Event(), asyncio.get_running_loop()

    def on_signal(number: int) -> None:
        if number == signal.SIGINT or signalled.is_set():
            app[DRAIN].until = 0  # hang up at once
        signalled.set()

    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, on_signal, number)
    await signalled.wait()
    await drain(app)  # still listening: webhooks get 503, late streams connect
    await runner.cleanup()  # stops listening, then close_calls() hangs up the rest


async def place_call(config: Config, number: str) -> str:
    """Ask Twilio to call `number`; the call comes to our webhook when answered."""
    form = {"To": number, "From": config.twilio_number, "Method": "POST"}
    form["Url"] = config.public_url + "/incoming"
    async with aiohttp.ClientSession() as http:
        return (await twilio_rest(http, config, "Calls.json", form))["sid"]


def call_command(config: Config, arguments: list[str]) -> None:
    """python bridge.py call +15551234567: place a call, print its CallSid."""
    needed = ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_NUMBER", "PUBLIC_URL")
    if missing := [name for name in needed if not getattr(config, name.lower())]:
        sys.exit(f"to place a call, set {', '.join(missing)}")
    if len(arguments) != 1 or not re.fullmatch(PHONE_NUMBER, arguments[0]):
        sys.exit("usage: python bridge.py call +15551234567 (+, then up to 15 digits)")
    try:
        print(asyncio.run(place_call(config, arguments[0])))
    except TwilioError as exc:
        sys.exit(str(exc))


def settings() -> Config:
    """The settings from the environment; a line per bad one, and exit."""
    # The process id tells gunicorn's workers apart.
    form = "%(asctime)s %(process)d %(levelname)s %(message)s"
    logging.basicConfig(level="INFO", format=form)
    try:
        return Config.from_env(os.environ)
    except ValueError as problems:
        sys.exit(str(problems))  # and no traceback


USAGE = "usage: python bridge.py [call NUMBER]: serve calls, or have Twilio call NUMBER"


def main() -> None:
    if sys.argv[1:2] == ["call"]:
        return call_command(settings(), sys.argv[2:])
    if sys.argv[1:] in (["-h"], ["--help"]):
        return print(USAGE)
    if sys.argv[1:]:  # a typo must not start a server
        sys.exit(USAGE)
    app = create_app()
    config = app[CONFIG]
    webhook = (config.public_url or "https://<your tunnel>") + "/incoming"
    log.info("listening on port %d, model %s", config.port, config.openai_model)
    if not config.twilio_auth_token:
        log.info("open http://localhost:%d/phone to talk to the agent", config.port)
    log.info("set your Twilio number's voice webhook to HTTP POST %s", webhook)
    asyncio.run(serve(app))


# ----------------------------------------------------------------------------
# The phone page: a browser that plays Twilio, to talk to the agent on a dev box

PHONE_PAGE = """\
<!doctype html>
<html lang="en">
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>Call the agent</title>
<style>
  * { font: 16px system-ui; text-align: center; }
  main { display: grid; grid-template-columns: repeat(3, 64px); gap: 14px; width: 220px;
         margin: 40px auto; padding: 28px; border-radius: 40px; background: #222; }
  output { grid-column: span 3; padding: 14px 0; border-radius: 9px; background: #cdc; }
  button { height: 64px; border: 0; border-radius: 50%; color: #fff; background: #444; }
  button:disabled { opacity: 0.3; }
  .call { background: #2a4; }
  .hang-up { grid-column: 3; background: #d33; }
</style>
<main>
  <output>Ready to call</output>
  <button>1</button><button>2</button><button>3</button>
  <button>4</button><button>5</button><button>6</button>
  <button>7</button><button>8</button><button>9</button>
  <button>*</button><button>0</button><button>#</button>
  <button class="call" onclick="call()">Call</button>
  <button class="hang-up" onclick="hangUp()" disabled>Hang up</button>
</main>
<script>
// To the bridge this page is Twilio: it posts the webhook, opens the stream the TwiML
// names and speaks Twilio's messages, so a call from here runs the code a phone call
// does. Its AudioContext runs at 8 kHz, so the browser resamples both ways.
const status = document.querySelector('output');
const callButton = document.querySelector('.call');
const hangUpButton = document.querySelector('.hang-up');
let audio, microphone, socket, start, streamStart, chunk, heard;
let playing, playEnd, marks;  // the agent's audio: sources, where it ends, marks
const sid = prefix => prefix + crypto.randomUUID().replaceAll('-', '');  // + 32 hex

// G.711 mu-law, the phone network's 8-bit audio, which Twilio and the agent speak.
function encodeMulaw(sample) {  // -1..1 to a byte
  const sign = sample < 0 ? 0x80 : 0;
  const magnitude = Math.min(Math.abs(sample) * 32768, 32635) + 0x84;  // clip, bias
  const exponent = 24 - Math.clz32(magnitude);  // its top bit, 7 to 14, as 0 to 7
  const mantissa = (magnitude >> (exponent + 3)) & 0x0f;
  return ~(sign | (exponent << 4) | mantissa) & 0xff;
}

function decodeMulaw(byte) {  // a byte to -1..1
  byte = ~byte;
  const exponent = (byte >> 4) & 7, mantissa = byte & 0x0f;
  const magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
  return (byte & 0x80 ? -magnitude : magnitude) / 32768;
}

async function call() {
  callButton.disabled = true;
  status.textContent = 'Calling…';
  socket = microphone = audio = undefined;  // the last call's are closed
  try {
    // The microphone first: if it is refused, no webhook opens a session for nobody.
    microphone = await navigator.mediaDevices.getUserMedia({audio: true});
    audio = new AudioContext({sampleRate: 8000});
    const callSid = sid('CA'), accountSid = sid('AC');
    const body = new URLSearchParams({CallSid: callSid, AccountSid: accountSid,
      From: 'client:browser', To: 'client:agent', Direction: 'inbound',
      CallStatus: 'ringing'});
    const answer = await fetch('/incoming', {method: 'POST', body});
    const twiml = new DOMParser().parseFromString(await answer.text(), 'text/xml');
    const stream = twiml.querySelector('Stream');
    if (!answer.ok || !stream) throw new Error(`the webhook answered ${answer.status}`);
    const parameters = Array.from(stream.children,  // its <Parameter>s
      parameter => [parameter.getAttribute('name'), parameter.getAttribute('value')]);
    start = {accountSid, streamSid: sid('MZ'), callSid, tracks: ['inbound'],
             mediaFormat: {encoding: 'audio/x-mulaw', sampleRate: 8000, channels: 1},
             customParameters: Object.fromEntries(parameters)};
    // The TwiML says wss:// for Twilio; the page takes its path on its own origin.
    const path = new URL(stream.getAttribute('url')).pathname;
    socket = new WebSocket(location.origin.replace('http', 'ws') + path);
    socket.onopen = answered;
    socket.onmessage = message => hear(JSON.parse(message.data));
    socket.onclose = () => end('the bridge hung up (its log says why)');
  } catch (error) {
    end(error.message);
  }
}

function answered() {  // as Twilio: connected, start, then a frame every 20 ms
  socket.send(JSON.stringify({event: 'connected', protocol: 'Call', version: '1.0.0'}));
  send('start', {start});
  [streamStart, chunk, heard] = [audio.currentTime, 0, []];
  [playing, playEnd, marks] = [new Set(), 0, []];
  const frames = audio.createScriptProcessor(256, 1, 1);  // 32 ms of samples at a time
  frames.onaudioprocess = event => listen(event.inputBuffer.getChannelData(0));
  audio.createMediaStreamSource(microphone).connect(frames).connect(audio.destination);
  hangUpButton.disabled = false;
  status.textContent = 'Talking';
}

function send(event, fields) {
  if (socket?.readyState !== WebSocket.OPEN) return;
  socket.send(JSON.stringify({event, streamSid: start.streamSid, ...fields}));
}

function listen(samples) {  // the microphone's samples go out in frames of 160
  heard.push(...samples);
  while (heard.length >= 160) {
    const payload = btoa(String.fromCharCode(...heard.splice(0, 160).map(encodeMulaw)));
    // The stream's clock is the audio clock, which playback runs on too.
    const timestamp = String(Math.round((audio.currentTime - streamStart) * 1000));
    chunk += 1;
    const media = {track: 'inbound', chunk: String(chunk), timestamp, payload};
    send('media', {media});
  }
  echoPlayedMarks();
}

function hear(message) {  // from the bridge: media, mark or clear
  if (message.event === 'media') play(message.media.payload);
  if (message.event === 'mark') marks.push({name: message.mark.name, at: playEnd});
  if (message.event === 'clear') {  // as Twilio: silence at once, and every mark back
    playing.forEach(source => source.stop());
    marks.forEach(mark => mark.at = 0);
    playEnd = 0;
  }
  echoPlayedMarks();
}

function play(payload) {  // after the audio queued: in order, without gaps
  const samples = Array.from(atob(payload), byte => decodeMulaw(byte.charCodeAt(0)));
  const buffer = new AudioBuffer({length: samples.length, sampleRate: 8000});
  buffer.getChannelData(0).set(samples);
  const source = new AudioBufferSourceNode(audio, {buffer});
  source.connect(audio.destination);
  playEnd = Math.max(playEnd, audio.currentTime);
  source.start(playEnd);
  playEnd += buffer.duration;
  playing.add(source);
  source.onended = () => playing.delete(source);
}

function echoPlayedMarks() {  // as Twilio: once the audio sent before it has played
  while (marks.length && marks[0].at <= audio.currentTime) {
    send('mark', {mark: {name: marks.shift().name}});
  }
}

function hangUp() {
  send('stop', {stop: {accountSid: start.accountSid, callSid: start.callSid}});
  end('you hung up');
}

function end(why) {
  if (socket) socket.onclose = null;  // closed here: not a second end
  socket?.close();
  microphone?.getTracks().forEach(track => track.stop());
  audio?.close();
  callButton.disabled = false;
  hangUpButton.disabled = true;
  status.textContent = `Call ended: ${why}`;
}

for (const key of document.querySelectorAll('button:not([class])')) {  // the keypad
  const dtmf = {track: 'inbound_track', digit: key.textContent};
  key.onclick = () => send('dtmf', {dtmf});
}
</script>
"""

if __name__ == "__main__":
    main()
