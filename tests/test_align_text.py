"""The transcript as the aligner's vocabulary spells it (align/text.py): every word keeps its text as written and
gets a spoken form, numbers included, so that it can be timed."""

import pytest

from speechrs.align.text import DELIMITER, speak_number, spell, spoken_words

UPPER = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ'") | {DELIMITER, "<pad>", "<s>", "</s>", "<unk>"}  # wav2vec2-base-960h's
FRENCH = set("abcdefghijklmnopqrstuvwxyzàâçéèêëîïôùûü'") | {DELIMITER}  # a lower-case vocabulary with accents


@pytest.mark.parametrize(
    "word, spoken",
    [
        ("2026", "TWENTY|TWENTY|SIX"),  # a year, as a transcript's "2026" is read
        ("1,500", "ONE|THOUSAND|FIVE|HUNDRED"),
        ("3.5", "THREE|POINT|FIVE"),
        ("50%", "FIFTY|PERCENT"),
        ("$20", "TWENTY|DOLLARS"),
        ("1st", "FIRST"),
        ("10:30", "TEN|THIRTY"),
        ("12,000,000", "TWELVE|MILLION"),
    ],
)
def test_numbers_are_spoken_so_they_can_be_timed(word, spoken):
    (aligned,) = spoken_words(word, UPPER, "en")
    assert aligned.text == word and aligned.spoken == spoken


def test_words_keep_their_text_and_lose_what_the_vocabulary_lacks():
    words = spoken_words("Hello, world! Don't stop — café 日本 (ok).", UPPER, "en")
    assert [w.text for w in words] == ["Hello,", "world!", "Don't", "stop", "—", "café", "日本", "(ok)."]
    assert [w.spoken for w in words] == ["HELLO", "WORLD", "DON'T", "STOP", "", "CAFE", "", "OK"]


def test_a_vocabulary_with_accents_keeps_them_and_numbers_follow_the_language():
    words = spoken_words("Élise a payé 3,5 euros en 2026.", FRENCH, "fr")
    assert [w.spoken for w in words] == [
        "élise",
        "a",
        "payé",
        "trois|virgule|cinq",
        "euros",
        "en",
        "deux|mille|vingt|six",
    ]
    assert (
        speak_number("1.500", "fr") == "mille cinq cents"
        and speak_number("1,500", "en") == "one thousand, five hundred"
    )


def test_a_language_num2words_does_not_speak_leaves_the_number_to_be_interpolated():
    assert speak_number("12", "zz") is None
    (word,) = spoken_words("12", UPPER, "zz")
    assert word.text == "12" and word.spoken == ""


def test_spell_joins_words_with_the_delimiter_and_drops_empty_ones():
    assert spell("twenty-six  and -- more", UPPER) == "TWENTY|SIX|AND|MORE"
    assert spell("", UPPER) == "" and spell("!!!", UPPER) == ""
