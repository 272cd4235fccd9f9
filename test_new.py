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
        (("A 1000", "mark", "at 400"), {"A": 400}),  # heard for as long as the clock ran
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
        ("t", {}, {"proof": bridge.call_proof("t", "CA" + "2" * 32)}, "stream refused: no valid proof"),
        ("t", {}, {"proof": bridge.call_proof("other", CA)}, "stream refused: no valid proof"),
        ("t", {}, {"proof": bridge.call_proof("t", CA)}, ""),
        ("", {CA: Streaming()}, {}, "a second stream for the call refused"),
        ("", {CA: Streaming()}, {"Voicemail": "machine_end_beep"}, ""),
        ("", {"CA" + "2" * 32: Streaming()}, {}, "stream refused: MAX_CALLS=1 reached"),
    ],
)
def test_why_a_stream_is_refused(token, calls, parameters, why):
    config = bridge.Config(twilio_auth_token=token, max_calls=1)
    state = bridge.State(config, calls=calls)
    start = {"callSid": CA, "customParameters": parameters}
    assert bridge.stream_refusal(state, start) == why


def test_a_proof_opens_one_stream():
    state = bridge.State(bridge.Config(twilio_auth_token="t"))
    start = {"callSid": CA, "customParameters": {"proof": bridge.call_proof("t", CA)}}
    assert bridge.stream_refusal(state, start) == ""
    assert bridge.stream_refusal(state, start) == "stream refused: its proof was used already"
