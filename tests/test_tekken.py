import pytest

from speechrs.voxtral.tekken import AudioPart, StreamDecoder, Tekken, chat_prompt, transcription_prompt

SAMPLES = [
    "Hello, world!",
    "  leading spaces and\ttabs\n\nnewlines",
    "naïve café — 東京 🙂 ÿ",
    "[INST] looks special but is text [/INST]",
    "lang:en",
    "1234567890 3.14159",
    "",
]


@pytest.fixture(scope="module")
def tekken(native_dir):
    return Tekken(native_dir / "tekken.json")


@pytest.fixture(scope="module")
def reference(native_dir):
    from reference import mistral_tokenizer

    return mistral_tokenizer(native_dir / "tekken.json").instruct_tokenizer.tokenizer


def test_lang_en_ids_match_the_public_fixture(tekken):
    assert tekken.encode("lang:en") == [9909, 1058, 1262]  # ids, i.e. BPE ranks + 1000 specials


@pytest.mark.reference
@pytest.mark.parametrize("text", SAMPLES)
def test_encode_and_decode_agree_with_mistral_common(tekken, reference, text):
    ids = tekken.encode(text)
    assert ids == reference.encode(text, bos=False, eos=False)
    assert tekken.decode(ids) == reference.decode(ids) == text


@pytest.mark.reference
def test_decode_skips_special_tokens_like_mistral_common(tekken, reference):
    ids = [1, 3] + tekken.encode("héllo") + [24, 25] + tekken.encode(" wörld") + [4, 2]
    assert tekken.decode(ids) == reference.decode(ids) == "héllo wörld"


def test_special_ids_are_read_from_the_file(tekken):
    assert (tekken.bos, tekken.eos, tekken.inst, tekken.end_inst) == (1, 2, 3, 4)
    assert tekken.special_id("[AUDIO]") == 24 and tekken.special_id("[TRANSCRIBE]") == 34
    assert tekken.audio.frame_rate == 12.5 and tekken.audio.chunk_samples == 480000


def test_stream_decoder_never_splits_characters(tekken):
    text = "東京 🙂 naïve"
    ids = tekken.encode(text)
    stream = StreamDecoder(tekken)
    deltas = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_audio_token_count_follows_mistral_common(tekken):
    assert tekken.audio.n_audio_tokens(480000) == 375
    assert tekken.audio.n_audio_tokens(960000) == 750


@pytest.mark.reference
@pytest.mark.parametrize("language", [None, "en", "fr"])
def test_transcription_prompt_matches_mistral_common(native_dir, tekken, language, clip):
    from mistral_common.protocol.transcription.request import TranscriptionRequest
    from reference import mistral_tokenizer

    request = TranscriptionRequest(audio=clip.read_bytes(), language=language)
    expected = mistral_tokenizer(native_dir / "tekken.json").encode_transcription(request).tokens
    assert transcription_prompt(tekken, 375, language) == expected


def _chat_cases():
    a = {"type": "input_audio", "input_audio": None}  # filled with the clip
    return {
        "audio_then_text": [{"role": "user", "content": [a, {"type": "text", "text": "What is said?"}]}],
        "text_audio_text": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Listen:"},
                    a,
                    {"type": "text", "text": "Summarise it."},
                    {"type": "text", "text": "Briefly."},
                ],
            }
        ],
        "two_audios": [{"role": "user", "content": [a, a, {"type": "text", "text": "Same speaker?"}]}],
        "multi_turn": [
            {"role": "user", "content": [a, {"type": "text", "text": "Transcribe."}]},
            {"role": "assistant", "content": "The quick brown fox.  "},
            {"role": "user", "content": "And in French?"},
        ],
        "consecutive_users": [{"role": "user", "content": [a]}, {"role": "user", "content": "Who speaks?"}],
    }


@pytest.mark.reference
@pytest.mark.parametrize("case", list(_chat_cases()))
def test_chat_prompt_matches_mistral_common(native_dir, tekken, clip, case):
    import base64

    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from reference import mistral_tokenizer

    b64 = base64.b64encode(clip.read_bytes()).decode()
    messages = _chat_cases()[case]
    ref_messages, ours = [], []
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            ref_messages.append(m)
            ours.append((m["role"], content))
            continue
        ref_parts, our_parts = [], []
        for p in content:
            if p["type"] == "input_audio":
                ref_parts.append({"type": "input_audio", "input_audio": {"data": b64, "format": "wav"}})
                our_parts.append(AudioPart(n_tokens=375))
            else:
                ref_parts.append(p)
                our_parts.append(p["text"])
        ref_messages.append({"role": m["role"], "content": ref_parts})
        ours.append((m["role"], our_parts))
    expected = (
        mistral_tokenizer(native_dir / "tekken.json")
        .encode_chat_completion(ChatCompletionRequest(messages=ref_messages))
        .tokens
    )
    assert chat_prompt(tekken, ours) == expected


def test_chat_prompt_rejects_system_messages(tekken):
    from speechrs.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="system"):
        chat_prompt(tekken, [("system", ["be brief"]), ("user", [AudioPart(375)])])
    with pytest.raises(InvalidRequestError, match="last message"):
        chat_prompt(tekken, [("user", ["hi"]), ("assistant", "hello")])
