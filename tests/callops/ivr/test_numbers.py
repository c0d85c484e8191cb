"""Spoken numbers to digits (callops.ivr.numbers): a table, the ambiguous cases, hostile input."""

from __future__ import annotations

import statistics
import time

import pytest

from callops.ivr.machine import MAX_NUMBER_DIGITS, spoken_number, words
from callops.ivr.numbers import NUMBER_WORDS, digits_from_words

# (as the recognizer writes it, the digits meant)
SPANISH = [
    ("dos mil uno", "2001"),
    ("Dos mil uno.", "2001"),
    ("uno cero cero uno", "1001"),
    ("uno, cero, cero, uno", "1001"),
    ("cero", "0"),
    ("cero cero siete", "007"),
    ("nueve", "9"),
    ("diez", "10"),
    ("once", "11"),
    ("quince", "15"),
    ("dieciséis", "16"),
    ("diecinueve", "19"),
    ("veinte", "20"),
    ("veintiuno", "21"),
    ("veintidós", "22"),
    ("veintitrés", "23"),
    ("veintiséis", "26"),
    ("treinta y dos", "32"),
    ("cuarenta y cinco", "45"),
    ("noventa y nueve", "99"),
    ("cien", "100"),
    ("ciento uno", "101"),
    ("ciento diez", "110"),
    ("ciento veintitrés", "123"),
    ("ciento cuarenta y dos", "142"),
    ("doscientos", "200"),
    ("doscientos uno", "201"),
    ("trescientas", "300"),
    ("quinientos", "500"),
    ("quinientos tres", "503"),
    ("setecientos setenta y siete", "777"),
    ("novecientos noventa y nueve", "999"),
    ("mil", "1000"),
    ("mil uno", "1001"),
    ("mil cien", "1100"),
    ("mil novecientos noventa y nueve", "1999"),
    ("dos mil", "2000"),
    ("dos mil veinticinco", "2025"),
    ("dos mil quinientos", "2500"),
    ("tres mil cuatrocientos cincuenta y seis", "3456"),
    ("diez mil", "10000"),
    ("veintiún mil", "21000"),
    ("cien mil", "100000"),
    ("doscientos mil", "200000"),
    ("ciento veinte mil trescientos", "120300"),
    ("novecientos noventa y nueve mil novecientos noventa y nueve", "999999"),
    ("un millón", "1000000"),
    ("dos millones", "2000000"),
    ("dos millones tres mil cuatro", "2003004"),
    ("mi número es dos mil uno", "2001"),
    ("el cliente es el quinientos tres por favor", "503"),
]
ENGLISH = [
    ("one oh oh one", "1001"),
    ("one zero zero one", "1001"),
    ("oh seven", "07"),
    ("seven", "7"),
    ("ten", "10"),
    ("thirteen", "13"),
    ("nineteen", "19"),
    ("twenty", "20"),
    ("twenty one", "21"),
    ("forty-two", "42"),
    ("ninety nine", "99"),
    ("a hundred", "100"),
    ("one hundred", "100"),
    ("one hundred and one", "101"),
    ("one hundred one", "101"),
    ("two hundred and thirty four", "234"),
    ("five hundred", "500"),
    ("nine hundred ninety nine", "999"),
    ("one thousand", "1000"),
    ("a thousand and one", "1001"),
    ("one thousand and one", "1001"),
    ("two thousand", "2000"),
    ("two thousand twenty five", "2025"),
    ("two thousand and five", "2005"),
    ("twelve thousand three hundred forty five", "12345"),
    ("nineteen hundred", "1900"),
    ("twenty one hundred", "2100"),
    ("one million", "1000000"),
    ("my client number is two thousand one", "2001"),
]
NUMERALS = [
    ("1001", "1001"),
    ("10 01", "1001"),
    ("1,001", "1001"),  # a thousands separator splits the numeral; the pieces join again
    ("007", "007"),
    ("2 mil", "2000"),
    ("2 mil 1", "2001"),
    ("dos mil 5", "2005"),
    ("dos mil 500", "2500"),
    ("15 mil", "15000"),
    ("3 hundred", "300"),
    ("5 mil 05", "500005"),  # a leading zero is a digit as written, not a place filled
]
# Ambiguous: what the rules in callops.ivr.numbers make of them, and why.
AMBIGUOUS = [
    ("dos uno", "21"),  # words that can't combine are digits in a row
    ("nineteen eighty four", "1984"),  # a teen can't take tens: two numbers, a year in pairs
    ("veinte veinte", "2020"),
    ("twenty twenty five", "2025"),
    ("twenty oh five", "2005"),  # zero words never combine
    ("mil cero uno", "100001"),
    ("ten oh five", "1005"),
    ("cuarenta dos", "42"),  # the recognizer dropped the "y": still one number
    ("cien uno", "1001"),  # "cien" takes nothing more ("ciento uno" does)
    ("diez y seis", "106"),  # the old spelling of dieciséis is not read
    ("uno y dos", "12"),  # "y" joins only what the grammar can join
    ("dos mil dos mil", "20021000"),  # a scale can't repeat within one number
    ("mil mil", "10001000"),
    ("un cliente", ""),  # an article, not a one
    ("una nota", ""),
    ("oh no", "0"),  # "oh" is always zero
    ("buenas tardes", ""),
    ("", ""),
]


@pytest.mark.parametrize(("said", "digits"), SPANISH + ENGLISH + NUMERALS + AMBIGUOUS)
def test_spoken_numbers_become_digits(said, digits):
    assert digits_from_words(words(said)) == digits


def test_every_number_word_is_as_words_leaves_it():
    """Lower case, no accents: otherwise a table entry could never match."""
    for word in NUMBER_WORDS:
        assert words(word) == (word,), word


@pytest.mark.parametrize("value", [*range(0, 1000), 1001, 2001, 2025, 10_000, 99_999, 123_456, 999_999])
def test_every_number_below_a_million_in_spanish_reads_back(value):
    """Spell each value the way a Spanish speaker says it, and read it back."""
    assert digits_from_words(words(spanish(value))) == str(value)


def spanish(value: int) -> str:
    units = ["cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"]
    small = {10: "diez", 11: "once", 12: "doce", 13: "trece", 14: "catorce", 15: "quince", 16: "dieciséis",
             17: "diecisiete", 18: "dieciocho", 19: "diecinueve", 20: "veinte", 21: "veintiuno",
             22: "veintidós", 23: "veintitrés", 24: "veinticuatro", 25: "veinticinco", 26: "veintiséis",
             27: "veintisiete", 28: "veintiocho", 29: "veintinueve"}  # fmt: skip
    tens = {
        3: "treinta",
        4: "cuarenta",
        5: "cincuenta",
        6: "sesenta",
        7: "setenta",
        8: "ochenta",
        9: "noventa",
    }
    hundreds = {1: "ciento", 2: "doscientos", 3: "trescientos", 4: "cuatrocientos", 5: "quinientos",
                6: "seiscientos", 7: "setecientos", 8: "ochocientos", 9: "novecientos"}  # fmt: skip

    def below_thousand(n: int) -> str:
        if n == 100:
            return "cien"
        parts = [hundreds[n // 100]] if n >= 100 else []
        rest = n % 100
        if rest >= 30:
            parts.append(tens[rest // 10] + (f" y {units[rest % 10]}" if rest % 10 else ""))
        elif rest >= 10:
            parts.append(small[rest])
        elif rest:
            parts.append(units[rest])
        return " ".join(parts)

    if value == 0:
        return "cero"
    thousands, rest = divmod(value, 1000)
    spoken = []
    if thousands:
        spoken.append("mil" if thousands == 1 else f"{below_thousand(thousands)} mil")
    if rest:
        spoken.append(below_thousand(rest))
    return " ".join(spoken)


def test_the_machine_reads_ids_with_these_rules_and_stops_past_the_longest():
    assert spoken_number(words("dos mil uno")) == "2001"
    long_said = words("nueve " * 10_000)
    read = spoken_number(long_said)
    assert MAX_NUMBER_DIGITS < len(read) <= MAX_NUMBER_DIGITS + 8  # enough to refuse, no more


def cpu_seconds(tokens: tuple[str, ...]) -> float:
    """Median CPU time of reading ``tokens`` (CPU, not wall: the machine is shared)."""
    runs = []
    for _ in range(5):
        started = time.process_time()
        digits_from_words(tokens)
        runs.append(time.process_time() - started)
    return statistics.median(runs)


@pytest.mark.parametrize(
    "unit",
    [
        "mil ",  # every word closes a number and opens the next
        "dos mil ",
        "ciento veinte mil ",
        "one hundred and ",
        "y ",
        "un ",  # each looks ahead one word
        "cero ",
        "9 ",
        "0000000 ",
        "palabra ",
        "twenty oh ",
    ],
)
def test_reading_is_linear_in_hostile_input(unit):
    small, large = words(unit * 500), words(unit * 20_000)  # 40x the words
    ratio = cpu_seconds(large) / max(cpu_seconds(small), 1e-6)
    assert ratio < 40 * 3, ratio  # linear, with room for a loaded machine
    assert cpu_seconds(large) < 1.0
