import base64

import orjson
import pytest

from actors.acs_media import (
    MAX_TRANSCRIPT_CHARS,
    AudioData,
    AudioMetadata,
    DtmfData,
    InvalidMessage,
    TranscriptionData,
    TranscriptionMetadata,
    outbound_audio,
    parse_message,
    stop_audio,
)

PCM = bytes(range(256)) * 2 + bytes(128)  # 640 bytes


def audio(pcm: bytes = PCM, key: str = "participantRawID", **extra: object) -> str:
    body = {
        "timestamp": "2024-11-15T19:16:12.925Z",
        key: "4:+1425",
        "data": base64.b64encode(pcm).decode(),
    }
    body.update(extra)
    return orjson.dumps({"kind": "AudioData", "audioData": body}).decode()


def metadata(**changes: object) -> str:
    body = {"subscriptionId": "s", "encoding": "PCM", "sampleRate": 16000, "channels": 1}
    body["length"] = 640
    body.update(changes)
    return orjson.dumps({"kind": "AudioMetadata", "audioMetadata": body}).decode()


def test_audio_data_both_participant_casings() -> None:
    for key in ("participantRawID", "participantRawId"):
        msg = parse_message(audio(key=key), frame_bytes=640)
        assert isinstance(msg, AudioData)
        assert msg.participant == "4:+1425" and msg.pcm == PCM and not msg.silent


def test_pascal_case_keys_and_silent_frame_without_data() -> None:
    raw = orjson.dumps({"Kind": "AudioData", "AudioData": {"Data": "", "Silent": True}})
    msg = parse_message(raw, frame_bytes=640)
    assert isinstance(msg, AudioData) and msg.silent and msg.pcm == bytes(640)


def test_metadata_dtmf_transcription() -> None:
    meta = parse_message(
        '{"kind":"AudioMetadata","audioMetadata":{"subscriptionId":"s","encoding":"PCM",'
        '"sampleRate":16000,"channels":1,"length":640}}'
    )
    assert meta == AudioMetadata("s", "PCM", 16000, 1, 640)
    assert parse_message('{"kind":"DtmfData","dtmfData":{"data":"3"}}') == DtmfData("3")
    tmeta = parse_message(
        '{"kind":"TranscriptionMetadata","transcriptionMetadata":{"subscriptionId":"s",'
        '"locale":"en-US","callConnectionId":"c","correlationId":"r"}}'
    )
    assert tmeta == TranscriptionMetadata("s", "en-US", "c", "r")
    t = parse_message(
        '{"kind":"TranscriptionData","transcriptionData":{"text":"Hello everyone.",'
        '"format":"display","confidence":0.92,"offset":212483227,"duration":9600000,"words":[{"text":"hello",'
        '"offset":212483227,"duration":2800000}],"participantRawID":"4:+1","resultStatus":"Final"}}'
    )
    assert isinstance(t, TranscriptionData)
    assert (t.text, t.final, t.confidence, t.participant) == ("Hello everyone.", True, 0.92, "4:+1")
    assert t.words[0].text == "hello"
    partial = parse_message(
        '{"kind":"TranscriptionData","transcriptionData":{"text":"Hel","resultStatus":"Intermediate"}}'
    )
    assert (
        isinstance(partial, TranscriptionData) and not partial.final and partial.confidence is None
    )


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("{not json", "invalid_json"),
        ("[1,2]", "invalid_json"),
        ('{"kind":"VideoData","videoData":{}}', "unknown_kind"),
        ('{"audioData":{}}', "missing_field"),
        ('{"kind":"AudioData"}', "missing_field"),
        ('{"kind":"TranscriptionData","transcriptionData":{"confidence":1}}', "missing_field"),
        ('{"kind":"AudioData","audioData":{"data":"!!notbase64!!"}}', "bad_base64"),
        (audio(PCM[:639]), "bad_frame_length"),
        (audio(PCM[:320]), "bad_frame_length"),
        ('{"kind":"DtmfData","dtmfData":{"data":"' + "1" * 70000 + '"}}', "oversized"),
        ('{"kind":"DtmfData","dtmfData":{"data":"' + "1" * 60000 + '"}}', "bad_dtmf"),
        ('{"kind":"DtmfData","dtmfData":{"data":"12"}}', "bad_dtmf"),
        ('{"kind":"DtmfData","dtmfData":{"data":"e"}}', "bad_dtmf"),
        ('{"kind":"DtmfData","dtmfData":{"data":""}}', "bad_dtmf"),
        ('{"kind":"DtmfData","dtmfData":{"data":3}}', "missing_field"),
        (metadata(length=320), "bad_metadata"),
        (metadata(sampleRate=24000, length=960), "bad_metadata"),
        (metadata(channels=2), "bad_metadata"),
        (metadata(encoding="OPUS"), "bad_metadata"),
        (metadata(length=None), "bad_metadata"),
    ],
)
def test_invalid_messages_have_reason_codes_without_payload(raw: str, reason: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        parse_message(raw, frame_bytes=640, sample_rate=16000)
    assert info.value.reason == reason
    assert str(info.value) == reason  # never the payload


@pytest.mark.parametrize(
    "tone", ["0", "9", "*", "#", "A", "D", "a", "one", "pound", "asterisk", "Pound", "ZERO"]
)
def test_dtmf_tones_keys_and_call_automation_names(tone: str) -> None:
    raw = orjson.dumps({"kind": "DtmfData", "dtmfData": {"data": tone}})
    assert parse_message(raw) == DtmfData(tone)


def test_metadata_agreeing_with_the_negotiated_format() -> None:
    assert parse_message(metadata(), frame_bytes=640, sample_rate=16000) == AudioMetadata(
        "s", "PCM", 16000, 1, 640
    )
    meta = parse_message(metadata(sampleRate=24000, length=960), frame_bytes=960, sample_rate=24000)
    assert isinstance(meta, AudioMetadata) and meta.length == 960


def test_transcription_text_is_capped() -> None:
    def message(text: str) -> str:
        body = {"text": text, "resultStatus": "Final"}
        return orjson.dumps({"kind": "TranscriptionData", "transcriptionData": body}).decode()

    long = parse_message(message("x" * 60_000))
    assert isinstance(long, TranscriptionData)
    assert long.text == "x" * MAX_TRANSCRIPT_CHARS and long.truncated
    exact = parse_message(message("y" * MAX_TRANSCRIPT_CHARS))
    assert isinstance(exact, TranscriptionData) and not exact.truncated


def test_outbound_messages() -> None:
    doc = orjson.loads(outbound_audio(b"\x01\x02"))
    assert doc == {"Kind": "AudioData", "AudioData": {"Data": "AQI="}, "StopAudio": None}
    assert orjson.loads(stop_audio()) == {"Kind": "StopAudio", "AudioData": None, "StopAudio": {}}


def test_an_oversized_or_unprintable_participant_id_is_refused() -> None:
    for raw in ("8:acs:" + "x" * 300, "4:+1425\x00555"):
        message = orjson.dumps(
            {"kind": "AudioData", "audioData": {"data": "AAAA", "participantRawID": raw}}
        )
        with pytest.raises(InvalidMessage, match="bad_participant"):
            parse_message(message)


def _with_data(data: str) -> str:
    body = {"timestamp": "2024-11-15T19:16:12.925Z", "participantRawID": "4:+1425", "data": data}
    return orjson.dumps({"kind": "AudioData", "audioData": body}).decode()


STANDARD = base64.b64encode(PCM).decode()


@pytest.mark.parametrize(
    "data",
    [
        STANDARD.rstrip("="),  # unpadded
        STANDARD[:76] + "\n" + STANDARD[76:],  # a MIME line break
        STANDARD[:76] + "\r\n" + STANDARD[76:-4] + " \t" + STANDARD[-4:] + "\n",
        base64.urlsafe_b64encode(PCM).decode(),  # URL-safe alphabet, padded
        base64.urlsafe_b64encode(PCM).decode().rstrip("="),  # URL-safe, unpadded
    ],
)
def test_audio_data_in_other_base64_forms_decodes_to_the_same_pcm(data: str) -> None:
    assert data != STANDARD
    msg = parse_message(_with_data(data), frame_bytes=640)
    assert isinstance(msg, AudioData) and msg.pcm == PCM


@pytest.mark.parametrize(
    "data",
    ["!!notbase64!!", "A", "A===", "AAAA=AAA", "AA*A", "AAAé", "AA\x00A", STANDARD[:-3]],
)
def test_audio_data_garbage_is_still_bad_base64(data: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        parse_message(_with_data(data), frame_bytes=640)
    assert info.value.reason == "bad_base64"
