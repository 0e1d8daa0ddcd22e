"""The calculator refuses hostile input with an error string and computes exactly."""

import operator
import random
from fractions import Fraction

import pytest

from swirl_jax.environment.calculator import Calculator, format_number

HOSTILE = [
    "__import__('os').system('touch /tmp/pwned')",
    "().__class__.__bases__[0].__subclasses__()",
    "(1).__class__",
    "open('/etc/passwd').read()",
    "exec('1')",
    "eval('1+1')",
    "lambda: 1",
    "(lambda x: x)(3)",
    "[x for x in range(10)]",
    "{x: 1 for x in range(3)}",
    "sum(i for i in range(10**9))",
    "9**9**9**9",
    "2**100000",
    "10**1000 * 10**1000",
    "'a' * 10**9",
    "[1] * 10**9",
    "(" * 1000 + "1" + ")" * 1000,
    "-(" * 120 + "1" + ")" * 120,  # short, but nested 120 deep
    "-" * 400 + "1",
    "1" + "+1" * 300,
    "1" * 100_000,
    "1+" * 50_000 + "1",
    "1e-9999999",  # 10 characters; converting the literal exactly took about 9 s
    "0e99999999",  # about 110 s, and was answered 0.0
    "1" * 70 + ".5",
    "(1, 2)",  # a tuple, not thousands separators
    "1,2",
    "\u0661\u0662\u0663 + 1",  # Arabic-Indic digits
    "\uff11\uff12 + 3",  # fullwidth digits
    "",
    "   ",
    "1/0",
    "5 % 0",
    "5 // 0",
    "sqrt(-4)",
    "(-8) ** 0.5",
    "1e308 * 1e308",
    "x + 1",
    "True + 1",
    "a.b",
    "[1, 2][0]",
    "1 if 1 else 2",
    "1 < 2",
    "f'{1}'",
    "import os",
    "1; 2",
    "foo(3)",
    "round(2.5, 10**9)",
    "max()",
    "3 @ 4",
    "1 << 100000",
    "~5",
    "b'1'",
    "1j * 2",
    None,
]


@pytest.mark.parametrize("expression", HOSTILE)
def test_hostile_input_becomes_an_error_string(expression, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  result = Calculator().run(expression)
  assert result.error
  assert isinstance(result.output, str) and result.output.startswith("Error: ")
  assert len(result.output) < 200
  assert list(tmp_path.iterdir()) == []  # nothing was written


def test_hostile_inputs_leave_the_calculator_working():
  """Refusals carry no state over: after every hostile input, ordinary math is still right."""
  calculator = Calculator()
  for expression in HOSTILE:
    assert calculator.run(expression).error
    assert calculator.run("(3 + 4) * 6").output == "42.0", expression


@pytest.mark.parametrize("expression,value", [
    ("80,000 * 150,000", Fraction(12_000_000_000)),  # thousands separators as GSM8K writes them
    ("1,234.5 + 0.5", Fraction(1235)),
    ("max(1,234)", Fraction(234)),  # arguments, not a separator: the expression parses as written
    ("1e-50 * 1e50", Fraction(1)),
    ("2 + 3 * 4", Fraction(14)),
    ("(2 + 3) * 4", Fraction(20)),
    ("7 / 2", Fraction(7, 2)),
    ("7 // 2", Fraction(3)),
    ("-7 // 2", Fraction(-4)),
    ("7 % 3", Fraction(1)),
    ("-7 % 3", Fraction(2)),
    ("2 ** 10", Fraction(1024)),
    ("2 ** -2", Fraction(1, 4)),
    ("0.1 + 0.2", Fraction(3, 10)),
    ("1e3 / 8", Fraction(125)),
    ("sqrt(144)", Fraction(12)),
    ("sqrt(2.25)", Fraction(3, 2)),
    ("abs(-3.5)", Fraction(7, 2)),
    ("round(2.675, 2)", Fraction(268, 100)),  # exact 2.675, half to even
    ("min(4, 2, 8) + max(1, 9)", Fraction(11)),
    ("--5", Fraction(5)),
    ("12 × 3 ÷ 4", Fraction(9)),
    ("2^3", Fraction(8)),
    ("1_000 * 3", Fraction(3000)),
])
def test_exact_values(expression, value):
  assert Calculator().evaluate(expression) == value


def test_random_integer_arithmetic_matches_python_exactly():
  rng = random.Random(0)
  ops = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": Fraction.__truediv__}
  for _ in range(300):
    numbers = [Fraction(rng.randint(1, 999)) for _ in range(rng.randint(2, 6))]
    symbols = [rng.choice(list(ops)) for _ in numbers[1:]]
    text = str(numbers[0].numerator)
    value = numbers[0]
    for symbol, number in zip(symbols, numbers[1:]):  # left to right, fully parenthesized
      text = f"({text} {symbol} {number.numerator})"
      value = ops[symbol](value, number)
    assert Calculator().evaluate(text) == value, text


def test_output_format_follows_the_paper():
  calculator = Calculator()
  assert calculator.run("4 * 6").output == "24.0"
  assert calculator.run("1 / 4").output == "0.25"
  assert calculator.run("1 / 3").output == repr(1 / 3)
  assert format_number(Fraction(-7)) == "-7.0"
  assert calculator.run("2 ** 70").output == f"{2 ** 70}.0"
