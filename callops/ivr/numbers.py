"""Spoken numbers to digits, in Spanish and English: "dos mil uno" -> "2001".

Callers say ids both ways: digit by digit ("uno cero cero uno", "one oh oh
one") and as numbers ("dos mil uno", "one thousand and one", "quinientos
tres"), and the recognizer may write some of it as numerals ("2 mil"). The
words come in already normalized (lower case, no accents: machine.words()).

The reading, in one left-to-right pass (linear in the words, each step O(1)):

1. Number words combine by each language's grammar into one number: units,
   teens and "veintiuno"-style words, tens ("treinta y dos", "thirty two"),
   hundreds ("quinientos", "ciento", "two hundred"), then scales ("mil",
   "thousand", "millón") multiplying what came before them.
2. A word that cannot continue the number being built ends it and starts the
   next; the numbers' digits are written one after another. So digit-by-digit
   speech is a run of one-digit numbers ("dos uno" -> "21"), and a year said
   in pairs reads right ("nineteen eighty four" -> "1984", "veinte veinte"
   -> "2020").
3. Zero words ("cero", "zero", "oh") never combine: each is one "0" digit
   ("twenty oh five" -> "2005"; "mil cero uno" -> "100001"). "oh" is always
   zero, never an interjection.
4. Numerals keep their digits as written ("007", "10 01" -> "1001") unless a
   scale word follows ("2 mil" -> "2000") or they fill the place a scale word
   left open ("dos mil 5" -> "2005").
5. "un", "una", "a", "an" are one only right before a scale or "hundred"
   ("un millón", "a hundred"); elsewhere they are articles and ignored.
6. "y" / "and" join and are ignored, as is every word that is not a number.

Ambiguous cases read by these rules (tests/callops/ivr/test_numbers.py holds
the table): "cien uno" -> "1001" ("cien" takes nothing after it; "ciento uno"
is 101), "diez y seis" -> "106" (the old spelling of "dieciséis" is not
read), "dos mil dos mil" -> "20021000" (a scale can't repeat in one number).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum


class Kind(Enum):
    ZERO = "zero"  # one 0 digit, never combined
    UNIT = "unit"  # 1-9
    SMALL = "small"  # a complete value under 100 in one word: 10-19, "veintiuno"-"veintinueve"
    TENS = "tens"  # 20, 30 ... 90: a unit may follow
    HUNDREDS = "hundreds"  # Spanish 100-900 in one word
    HUNDRED = "hundred"  # English multiplier: "two hundred"
    SCALE = "scale"  # mil / thousand, millón / million
    ARTICLE = "article"  # un, una, a, an: one before a scale
    JOINER = "joiner"  # y, and


@dataclass(frozen=True)
class NumberWord:
    kind: Kind
    value: int
    room_after: int = 0  # how much may still be added after this word ("ciento": 99, "cien": 0)


def _words(kind: Kind, spelled: Mapping[str, int], room_after: int = 0) -> dict[str, NumberWord]:
    return {word: NumberWord(kind, value, room_after) for word, value in spelled.items()}


def _each(text: str, value: int) -> dict[str, int]:
    return dict.fromkeys(text.split(), value)


UNITS_ES = {
    "uno": 1,
    "dos": 2,
    "tres": 3,
    "cuatro": 4,
    "cinco": 5,
    "seis": 6,
    "siete": 7,
    "ocho": 8,
    "nueve": 9,
}
UNITS_EN = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}
SMALL_ES = {
    "diez": 10, "once": 11, "doce": 12, "trece": 13, "catorce": 14, "quince": 15, "dieciseis": 16,
    "diecisiete": 17, "dieciocho": 18, "diecinueve": 19, "veintiuno": 21, "veintiun": 21, "veintiuna": 21,
    "veintidos": 22, "veintitres": 23, "veinticuatro": 24, "veinticinco": 25, "veintiseis": 26,
    "veintisiete": 27, "veintiocho": 28, "veintinueve": 29,
}  # fmt: skip
SMALL_EN = {
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
TENS_ES = {"veinte": 20, "treinta": 30, "cuarenta": 40, "cincuenta": 50, "sesenta": 60, "setenta": 70,
           "ochenta": 80, "noventa": 90}  # fmt: skip
TENS_EN = {"twenty": 20, "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
           "eighty": 80, "ninety": 90}  # fmt: skip
HUNDREDS_ES = {
    **_each("ciento", 100), **_each("doscientos doscientas", 200), **_each("trescientos trescientas", 300),
    **_each("cuatrocientos cuatrocientas", 400), **_each("quinientos quinientas", 500),
    **_each("seiscientos seiscientas", 600), **_each("setecientos setecientas", 700),
    **_each("ochocientos ochocientas", 800), **_each("novecientos novecientas", 900),
}  # fmt: skip

NUMBER_WORDS: Mapping[str, NumberWord] = {
    **_words(Kind.ZERO, _each("cero zero oh", 0)),
    **_words(Kind.UNIT, {**UNITS_ES, **UNITS_EN}),
    **_words(Kind.SMALL, {**SMALL_ES, **SMALL_EN}),
    **_words(Kind.TENS, {**TENS_ES, **TENS_EN}, room_after=9),
    **_words(Kind.HUNDREDS, HUNDREDS_ES, room_after=99),
    "cien": NumberWord(Kind.HUNDREDS, 100, room_after=0),  # "cien" alone; "ciento" takes more
    **_words(Kind.HUNDRED, _each("hundred", 100), room_after=99),
    **_words(Kind.SCALE, {**_each("mil thousand", 1000), **_each("millon millones million", 10**6)}),
    **_words(Kind.ARTICLE, _each("un una a an", 1)),
    **_words(Kind.JOINER, _each("y and", 0)),
}

FRESH_GROUP = 999  # nothing said yet in this group of three digits: any of it may come


class _Number:
    """One number being built: completed scale groups, plus the group of three digits in progress."""

    def __init__(self) -> None:
        self.scaled = 0  # e.g. 2000 after "dos mil"
        self.group = 0  # 0-999, the part after the last scale word
        self.room = FRESH_GROUP  # the most that may still be added to the group
        self.smallest_scale = 0  # 0: none yet; a later scale must be smaller ("millones ... mil")
        self.literal: str | None = None  # a numeral as written, until a scale word multiplies it
        self.after_multiplier = False  # a numeral may fill the place a scale/hundred left open
        self.said = False

    def add(self, value: int, room_after: int) -> bool:
        """Put ``value`` into the open places of the group, if they can hold it."""
        place = 999 if value >= 100 else 99 if value >= 10 else 9
        if value <= 0 or self.literal is not None or self.room < place:
            return False
        self.group += value
        self.room = room_after
        self.said, self.after_multiplier = True, False
        return True

    def add_numeral(self, numeral: str) -> bool:
        if not (self.after_multiplier and numeral[0] != "0" and len(numeral) <= 3):
            return False
        return self.add(int(numeral), 0)

    def times_hundred(self) -> bool:
        """English "hundred": multiplies the 1-99 said so far in this group (or one, alone)."""
        if self.group >= 100 or (self.literal is not None and len(self.literal) > 2):
            return False
        base = self._take_literal() if self.literal is not None else self.group or 1
        self.group = base * 100
        self.room, self.said, self.after_multiplier = 99, True, True
        return True

    def times_scale(self, scale: int) -> bool:
        if self.smallest_scale and scale >= self.smallest_scale:
            return False
        if self.literal is not None and (self.literal[0] == "0" or len(self.literal) > 3):
            return False
        base = self._take_literal() if self.literal is not None else self.group or 1
        self.scaled += base * scale
        self.group, self.room, self.smallest_scale = 0, FRESH_GROUP, scale
        self.said, self.after_multiplier = True, True
        return True

    def _take_literal(self) -> int:
        assert self.literal is not None
        value, self.literal = int(self.literal), None
        return value

    def digits(self) -> str:
        if self.literal is not None:
            return self.literal
        return str(self.scaled + self.group) if self.said else ""


def digits_from_words(tokens: Sequence[str], limit: int | None = None) -> str:
    """The digits said in ``tokens`` (see the module's rules); "" when none.

    ``limit``: stop reading once more than this many digits are out (the result
    is then longer than ``limit``, which is all a caller needs to refuse it).
    """
    out: list[str] = []
    length = 0
    current = _Number()

    def close() -> None:
        nonlocal current, length
        text = current.digits()
        out.append(text)
        length += len(text)
        current = _Number()

    for index, token in enumerate(tokens):
        if limit is not None and length > limit:
            break
        if token.isascii() and token.isdigit():
            if not current.add_numeral(token):
                close()
                current.literal = token
            continue
        word = NUMBER_WORDS.get(token)
        if word is None or word.kind is Kind.JOINER:
            continue
        match word.kind:
            case Kind.ZERO:
                close()
                out.append("0")
                length += 1
            case Kind.ARTICLE:
                following = NUMBER_WORDS.get(tokens[index + 1]) if index + 1 < len(tokens) else None
                before_scale = following is not None and following.kind in (Kind.SCALE, Kind.HUNDRED)
                if before_scale and not current.add(1, 0):
                    close()
                    current.add(1, 0)
            case Kind.HUNDRED:
                if not current.times_hundred():
                    close()
                    current.times_hundred()
            case Kind.SCALE:
                if not current.times_scale(word.value):
                    close()
                    current.times_scale(word.value)
            case _:
                if not current.add(word.value, word.room_after):
                    close()
                    current.add(word.value, word.room_after)
    close()
    return "".join(out)


def spoken_digits(words: Iterable[str], limit: int | None = None) -> str:
    """As digits_from_words, for any iterable of words."""
    return digits_from_words(tuple(words), limit)
