"""A transcript's words as a CTC aligner's vocabulary spells them, so every word can be timed: case folded to the
vocabulary's, numbers and their symbols spoken in the transcript's language (num2words: "2026" -> "twenty
twenty-six", "3.5" -> "three point five", "50%" -> "fifty percent"), accents dropped where the vocabulary lacks them,
other characters left out. Each word keeps its text as written, so times found for its spoken form map back onto
it; a word with nothing left to align (a symbol, another script) gets an empty spoken form and is timed later
between its neighbours."""

import re
import unicodedata
from dataclasses import dataclass

DELIMITER = "|"  # between words in wav2vec2 CTC vocabularies

# the spoken word for % in the languages num2words speaks; elsewhere the sign is left out
PERCENT = {"en": "percent", "fr": "pour cent", "de": "Prozent", "es": "por ciento", "it": "per cento"}
PERCENT |= {"pt": "por cento", "nl": "procent"}
CURRENCY = {"$": "dollars", "€": "euros", "£": "pounds"}  # spoken after the amount, in English only

_NUMBER = re.compile(r"^(?P<cur>[$€£])?(?P<num>\d(?:[\d,.]*\d)?)(?P<suffix>%|st|nd|rd|th)?$", re.IGNORECASE)
# languages that write 3,5 for three and a half and 1.500 for fifteen hundred
COMMA_DECIMAL = {"fr", "de", "es", "it", "pt", "nl", "ru", "pl", "cs", "sv", "da", "no", "fi", "tr", "ro", "hu"}
_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")
_EDGE = re.compile(r"^[^\w$€£]+|[^\w%]+$")  # punctuation around a word (kept: a leading currency, a trailing %)


@dataclass(frozen=True)
class AlignWord:
    text: str  # as written in the transcript
    spoken: str  # its characters in the aligner's vocabulary, words joined by DELIMITER; "" when none are left


def _number(value: str, language: str) -> float | int:
    """'1,500' -> 1500 and '3.5' -> 3.5; in COMMA_DECIMAL languages '1.500' -> 1500 and '3,5' -> 3.5."""
    if language in COMMA_DECIMAL:
        value = re.sub(r"\.(?=\d{3}(?!\d))", "", value).replace(",", ".")
    else:
        value = value.replace(",", "")
    return float(value) if "." in value else int(value)


def speak_number(word: str, language: str) -> str | None:
    """A number as written ("2026", "1,500", "3.5", "50%", "$20", "1st", "10:30") in words of `language`, or None
    when `word` is no number or num2words does not speak the language."""
    from num2words import num2words

    try:
        if time := _TIME.match(word):
            hours, minutes = int(time[1]), int(time[2])
            return num2words(hours, lang=language) + ("" if minutes == 0 else " " + num2words(minutes, lang=language))
        match = _NUMBER.match(word)
        if match is None:
            return None
        value, suffix = _number(match["num"], language), (match["suffix"] or "").lower()
        if suffix in ("st", "nd", "rd", "th") and isinstance(value, int):
            return num2words(value, lang=language, to="ordinal")
        if isinstance(value, int) and 1100 <= value <= 2099 and match["num"].isdigit() and not match["cur"]:
            spoken = num2words(value, lang=language, to="year")  # read as a year, as a transcript's "2026" is
        else:
            spoken = num2words(value, lang=language)
    except (NotImplementedError, OverflowError, ValueError):
        return None
    if suffix == "%":
        spoken += " " + PERCENT.get(language, "")
    if match["cur"] and language == "en":
        spoken += " " + CURRENCY[match["cur"]]
    return spoken.strip()


def spell(text: str, vocab: set[str]) -> str:
    """`text` in the vocabulary's characters: its case (the vocabulary's letters are one case or both), accents
    dropped where only the bare letter is known, word breaks as DELIMITER, anything else left out."""
    letters = [c for c in vocab if len(c) == 1 and c.isalpha()]  # not the special tokens such as <pad>
    upper = any(c.isupper() for c in letters) and not any(c.islower() for c in letters)
    out = []
    for char in text.upper() if upper else text.lower():
        if char in vocab and char != DELIMITER:
            out.append(char)
        elif char.isspace() or char in "-–—":
            out.append(DELIMITER)
        else:
            bare = unicodedata.normalize("NFKD", char)[0]
            if bare != char and bare in vocab:
                out.append(bare)
    return DELIMITER.join(part for part in "".join(out).split(DELIMITER) if part)


def spoken_words(transcript: str, vocab: set[str], language: str | None) -> list[AlignWord]:
    """The transcript's words in order, each with what the aligner should find for it."""
    language = (language or "en").lower()
    words = []
    for text in transcript.split():
        core = _EDGE.sub("", text)
        spoken = speak_number(core, language) if any(c.isdigit() for c in core) else None
        words.append(AlignWord(text, spell(spoken if spoken is not None else core, vocab)))
    return words
