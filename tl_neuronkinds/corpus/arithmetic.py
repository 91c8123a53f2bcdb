"""Arithmetic questions and answers in the style of DeepMind Mathematics (Saxton et al. 2019).

One problem is one document: the question, a newline, then ``"Answer: "`` and the answer,
computed exactly with integers and :class:`decimal.Decimal` (rounding is half away from zero).
Examples::

    What is 37 + -12?
    Answer: 25

    Solve 3*x + 4 = 19 for x.
    Answer: 5

Problem kinds: addition and subtraction, multiplication, exact division, remainders, linear
equations (one- and two-sided), rounding integers and decimals, comparisons, greatest common
divisors and least common multiples, evaluation of bracketed expressions, place value,
sorting, primality and prime factors, divisibility, and powers.

The functions are marked ``@no_type_check``: a build of the embedded corpus calls them about a
million times, and the runtime type checks of the test suite (jaxtyping + beartype) would
otherwise make that build four times slower.
"""

import math
import random
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from typing import no_type_check

_VARIABLES = "abcdfghjklmnpqrstuvwxyz"
_PLACES = {10: "ten", 100: "one hundred", 1000: "one thousand"}
_DIGIT_NAMES = ("units", "tens", "hundreds", "thousands", "ten thousands")
_DECIMAL_WORDS = ("one decimal place", "two decimal places", "three decimal places")


@no_type_check
def _number(rng: random.Random, max_digits: int = 3) -> int:
    """A signed integer whose number of digits is itself uniform in 1..max_digits."""
    bound = 10 ** rng.randint(1, max_digits)
    return rng.randint(-bound + 1, bound - 1)


@no_type_check
def _add_sub(rng: random.Random) -> tuple[str, int]:
    a, b = _number(rng), _number(rng)
    template, value = rng.choice(
        [
            ("What is {a} + {b}?", a + b),
            ("Calculate {a} + {b}.", a + b),
            ("Add {a} and {b}.", a + b),
            ("Sum {a} and {b}.", a + b),
            ("Total of {a} and {b}.", a + b),
            ("What is {a} - {b}?", a - b),
            ("Calculate {a} - {b}.", a - b),
            ("What is {a} minus {b}?", a - b),
            ("Subtract {b} from {a}.", a - b),
        ]
    )
    return template.format(a=a, b=b), value


@no_type_check
def _multiply(rng: random.Random) -> tuple[str, int]:
    a, b = _number(rng, 2), _number(rng, 3)
    template = rng.choice(
        [
            "What is {a} times {b}?",
            "Multiply {a} and {b}.",
            "Calculate {a}*{b}.",
            "What is the product of {a} and {b}?",
        ]
    )
    return template.format(a=a, b=b), a * b


@no_type_check
def _divide(rng: random.Random) -> tuple[str, int]:
    b = rng.choice([-1, 1]) * rng.randint(1, 50)
    q = _number(rng, 3)
    template = rng.choice(
        ["Calculate {a} / {b}.", "Divide {a} by {b}.", "What is {a} divided by {b}?"]
    )
    return template.format(a=q * b, b=b), q


@no_type_check
def _remainder(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(10, 2000), rng.randint(2, 60)
    template = rng.choice(
        [
            "What is the remainder when {a} is divided by {b}?",
            "Calculate the remainder when {a} is divided by {b}.",
        ]
    )
    return template.format(a=a, b=b), a % b


@no_type_check
def _term(coefficient: int, variable: str) -> str:
    if coefficient == 1:
        return variable
    if coefficient == -1:
        return f"-{variable}"
    return f"{coefficient}*{variable}"


@no_type_check
def _plus(expression: str, constant: int) -> str:
    if constant == 0:
        return expression
    sign = "+" if constant > 0 else "-"
    return f"{expression} {sign} {abs(constant)}"


@no_type_check
def _nonzero(rng: random.Random, bound: int) -> int:
    return rng.choice([-1, 1]) * rng.randint(1, bound)


@no_type_check
def _linear(rng: random.Random) -> tuple[str, int]:
    v = rng.choice(_VARIABLES)
    x = rng.randint(-20, 20)
    a, b = _nonzero(rng, 12), rng.randint(-60, 60)
    if rng.random() < 0.5:
        left, right = _plus(_term(a, v), b), str(a * x + b)
        if rng.random() < 0.5:
            left, right = right, left
    else:
        c = a + _nonzero(rng, 9)
        d = a * x + b - c * x
        left, right = _plus(_term(a, v), b), _plus(_term(c, v), d)
    return f"Solve {left} = {right} for {v}.", x


@no_type_check
def _round_integer(rng: random.Random) -> tuple[str, int]:
    n = _number(rng, 6)
    place = rng.choice(list(_PLACES))
    value = int((Decimal(n) / place).quantize(Decimal(1), ROUND_HALF_UP)) * place
    template = rng.choice(
        ["Round {n} to the nearest {p}.", "What is {n} rounded to the nearest {p}?"]
    )
    return template.format(n=n, p=_PLACES[place]), value


@no_type_check
def _round_decimal(rng: random.Random) -> tuple[str, str]:
    digits = rng.randint(2, 4)
    x = Decimal(_number(rng, 6)).scaleb(-digits)
    k = rng.randint(0, digits - 1)
    rounded = x.quantize(Decimal(1).scaleb(-k), ROUND_HALF_UP)
    if rounded == 0:
        rounded = abs(rounded)  # no "-0.0"
    where = "the nearest integer" if k == 0 else _DECIMAL_WORDS[k - 1]
    return f"Round {x:f} to {where}.", f"{rounded:f}"


@no_type_check
def _compare(rng: random.Random) -> tuple[str, str]:
    a = _number(rng)
    b = a + _nonzero(rng, 50)
    if rng.random() < 0.5:
        a, b = b, a
    template, value = rng.choice(
        [
            ("Which is bigger: {a} or {b}?", max(a, b)),
            ("Which is smaller: {a} or {b}?", min(a, b)),
            ("Which is greater: {a} or {b}?", max(a, b)),
            ("Is {a} greater than {b}?", a > b),
            ("Is {a} less than {b}?", a < b),
            ("Is {a} < {b}?", a < b),
            ("Is {a} >= {b}?", a >= b),
        ]
    )
    return template.format(a=a, b=b), str(value)


@no_type_check
def _gcd_lcm(rng: random.Random) -> tuple[str, int]:
    g = rng.randint(1, 30)
    a, b = g * rng.randint(1, 30), g * rng.randint(1, 30)
    template, value = rng.choice(
        [
            ("What is the greatest common divisor of {a} and {b}?", math.gcd(a, b)),
            ("Calculate the highest common factor of {a} and {b}.", math.gcd(a, b)),
            ("What is the lowest common multiple of {a} and {b}?", math.lcm(a, b)),
            ("Calculate the least common multiple of {a} and {b}.", math.lcm(a, b)),
        ]
    )
    return template.format(a=a, b=b), value


_EXPRESSIONS: list[tuple[str, Callable[[int, int, int], int]]] = [
    ("({a} + {b})*{c}", lambda a, b, c: (a + b) * c),
    ("{a} - ({b} - {c})", lambda a, b, c: a - (b - c)),
    ("{a} + {b} - {c}", lambda a, b, c: a + b - c),
    ("{a}*{b} + {c}", lambda a, b, c: a * b + c),
    ("({a} - {b}) + ({c} - {a})", lambda a, b, c: (a - b) + (c - a)),
    ("{c} - {a}*{b}", lambda a, b, c: c - a * b),
]


@no_type_check
def _evaluate(rng: random.Random) -> tuple[str, int]:
    a, b, c = _number(rng, 2), _number(rng, 2), _number(rng, 2)
    expression, function = rng.choice(_EXPRESSIONS)
    template = rng.choice(["Evaluate {e}.", "What is {e}?", "Calculate {e}."])
    return template.format(e=expression.format(a=a, b=b, c=c)), function(a, b, c)


@no_type_check
def _place_value(rng: random.Random) -> tuple[str, int]:
    n = rng.randint(10, 10_000_000)
    place = rng.randint(0, min(len(str(n)), len(_DIGIT_NAMES)) - 1)
    return f"What is the {_DIGIT_NAMES[place]} digit of {n}?", n // 10**place % 10


@no_type_check
def _sort(rng: random.Random) -> tuple[str, str]:
    values = rng.sample(range(-200, 200), rng.randint(3, 5))
    listed = ", ".join(map(str, values))
    if rng.random() < 0.5:
        question, order = f"Sort {listed} in increasing order.", sorted(values)
    else:
        question, order = f"Put {listed} in descending order.", sorted(values, reverse=True)
    return question, ", ".join(map(str, order))


@no_type_check
def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while p * p <= n:
        if n % p == 0:
            factors.append(p)
            while n % p == 0:
                n //= p
        p += 1
    if n > 1:
        factors.append(n)
    return factors


@no_type_check
def _primes(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(2, 5000)
    factors = _prime_factors(n)
    prime = factors == [n]
    template, value = rng.choice(
        [
            ("Is {n} a prime number?", str(prime)),
            ("Is {n} composite?", str(not prime)),
            ("List the prime factors of {n}.", ", ".join(map(str, factors))),
            ("What are the prime factors of {n}?", ", ".join(map(str, factors))),
        ]
    )
    return template.format(n=n), value


@no_type_check
def _divisibility(rng: random.Random) -> tuple[str, str]:
    b = rng.randint(2, 40)
    a = b * rng.randint(1, 60) + (0 if rng.random() < 0.5 else rng.randint(1, b - 1))
    template = rng.choice(["Is {a} a multiple of {b}?", "Does {b} divide {a}?"])
    return template.format(a=a, b=b), str(a % b == 0)


@no_type_check
def _power(rng: random.Random) -> tuple[str, int]:
    a = _nonzero(rng, 30)
    template, value = rng.choice(
        [
            ("What is {a} squared?", a**2),
            ("What is the square of {a}?", a**2),
            ("What is {a} cubed?", a**3),
            ("Calculate {a}**2.", a**2),
        ]
    )
    return template.format(a=a), value


_KINDS: list[Callable[[random.Random], tuple[str, object]]] = [
    _add_sub,
    _add_sub,
    _multiply,
    _divide,
    _remainder,
    _linear,
    _linear,
    _round_integer,
    _round_decimal,
    _compare,
    _gcd_lcm,
    _evaluate,
    _place_value,
    _sort,
    _primes,
    _divisibility,
    _power,
]


@no_type_check
def arithmetic_problem(rng: random.Random) -> str:
    """One question and its answer, ``"<question>\\nAnswer: <answer>"``, drawn with ``rng``."""
    question, answer = rng.choice(_KINDS)(rng)
    return f"{question}\nAnswer: {answer}"
