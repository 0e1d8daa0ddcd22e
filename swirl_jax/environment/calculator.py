"""A calculator for model-written arithmetic: parsed with `ast`, computed exactly.

Model text is untrusted. Nothing here calls eval/exec/sympify: the expression
is parsed into an AST, every node is checked against a whitelist, and the
value is computed with `fractions.Fraction`. Sizes are bounded (input length,
node count, literal digits and exponents before any conversion, exponent,
operand bits, result magnitude), so every call returns quickly; any refusal or
math error becomes an error string for the model. Thousands separators as
GSM8K writes them (`80,000`) are read as numbers; tuples are still refused.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from fractions import Fraction
from typing import Callable

import gin

from swirl_jax.environment.tool import ToolResult


class CalculatorError(ValueError):
  """A refusal or a math error; its message is shown to the model."""


# A number with thousands separators, not part of a longer token: 80,000 or 1,234,567.5
_GROUPED = re.compile(r"(?<![\w.,])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w,])")
_EXPONENT = re.compile(r"[eE]([-+]?\d+)")
MAX_LITERAL_DIGITS = 64
MAX_LITERAL_EXPONENT = 400


def _sqrt(x: Fraction) -> Fraction:
  if x < 0:
    raise CalculatorError("sqrt of a negative number")
  num, den = math.isqrt(x.numerator), math.isqrt(x.denominator)
  if num * num == x.numerator and den * den == x.denominator:
    return Fraction(num, den)
  return Fraction(math.sqrt(x))


def _round(x: Fraction, digits: Fraction = Fraction(0)) -> Fraction:
  if digits.denominator != 1 or not -20 <= digits <= 20:
    raise CalculatorError("round() takes a whole number of digits between -20 and 20")
  return Fraction(round(x, int(digits)))


_FUNCTIONS: dict[str, tuple[Callable[..., Fraction], int, int]] = {
    # name: (function, min args, max args)
    "sqrt": (_sqrt, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (min, 1, 16),
    "max": (max, 1, 16),
    "floor": (lambda x: Fraction(math.floor(x)), 1, 1),
    "ceil": (lambda x: Fraction(math.ceil(x)), 1, 1),
}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Calculator:
  """The `<math_exp>` tool. Limits are settings; the defaults suit GSM8K-like math."""

  name: str = "calculator"
  tag: str = "math_exp"
  max_length: int = 500
  max_nodes: int = 200
  max_exponent: int = 1000
  max_bits: int = 4096
  max_magnitude: float = 1e100

  def run(self, query: str) -> ToolResult:
    try:
      return ToolResult(format_number(self.evaluate(query)))
    except CalculatorError as e:
      return ToolResult(f"Error: {e}", error=True)

  def evaluate(self, expression: str) -> Fraction:
    """The exact value of `expression`, or CalculatorError."""
    if not isinstance(expression, str):
      raise CalculatorError("the expression must be text")
    text = expression.strip().replace("\u00d7", "*").replace("\u00f7", "/")
    if not text:
      raise CalculatorError("empty expression")
    if len(text) > self.max_length:
      raise CalculatorError(f"expression longer than {self.max_length} characters")
    if not text.isascii():
      raise CalculatorError("only ASCII digits, operators and function names are allowed")
    text = text.replace("^", "**")
    tree = self._parse(text)
    if _GROUPED.search(text) and any(isinstance(n, ast.Tuple) for n in ast.walk(tree)):
      # "80,000 * 150,000" parses as a tuple: read the separators as GSM8K means them.
      text = _GROUPED.sub(lambda m: m.group(0).replace(",", ""), text)
      tree = self._parse(text)
    nodes = sum(1 for _ in ast.walk(tree))
    if nodes > self.max_nodes:
      raise CalculatorError(f"expression has more than {self.max_nodes} parts")
    try:
      value = self._eval(tree.body, 0, text)
    except RecursionError:
      raise CalculatorError("expression nested too deeply") from None
    except ZeroDivisionError:
      raise CalculatorError("division by zero") from None
    except (OverflowError, ValueError) as e:
      raise CalculatorError(f"math error: {e}") from None
    return self._checked(value)

  @staticmethod
  def _parse(text: str) -> ast.Expression:
    try:
      return ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
      raise CalculatorError("not a valid arithmetic expression") from None

  @staticmethod
  def _literal(text: str) -> Fraction:
    """A float literal as written ("0.1" is 1/10), bounded before conversion: Fraction("1e-9999999")
    would build a ten-million-digit denominator."""
    exponent = _EXPONENT.search(text)
    if exponent and abs(int(exponent.group(1)[:8])) > MAX_LITERAL_EXPONENT:
      raise CalculatorError("number out of range")
    if sum(c.isdigit() for c in text) > MAX_LITERAL_DIGITS:
      raise CalculatorError(f"number with more than {MAX_LITERAL_DIGITS} digits")
    return Fraction(text)

  def _checked(self, value: Fraction) -> Fraction:
    if abs(value) > self.max_magnitude:
      raise CalculatorError("result too large")
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > self.max_bits:
      raise CalculatorError("result needs too much precision")
    return value

  def _eval(self, node: ast.AST, depth: int, source: str) -> Fraction:
    if depth > 50:
      raise CalculatorError("expression nested too deeply")
    match node:
      case ast.Constant(value=bool()):
        raise CalculatorError("booleans are not numbers here")
      case ast.Constant(value=int() as number):
        return self._checked(Fraction(number))
      case ast.Constant(value=float() as number):
        if not math.isfinite(number):
          raise CalculatorError("number out of range")
        # The literal as written ("0.1" is 1/10), not its binary float.
        literal = ast.get_source_segment(source, node) or repr(number)
        return self._checked(self._literal(literal.replace("_", "")))
      case ast.UnaryOp(op=ast.USub(), operand=operand):
        return -self._eval(operand, depth + 1, source)
      case ast.UnaryOp(op=ast.UAdd(), operand=operand):
        return self._eval(operand, depth + 1, source)
      case ast.BinOp(left=left, op=op, right=right):
        a, b = self._eval(left, depth + 1, source), self._eval(right, depth + 1, source)
        return self._checked(self._binary(op, a, b))
      case ast.Call(func=ast.Name(id=name), args=args, keywords=[]) if name in _FUNCTIONS:
        function, low, high = _FUNCTIONS[name]
        if not low <= len(args) <= high:
          raise CalculatorError(f"{name}() takes {low}" + (f" to {high}" if high > low else "") + " arguments")
        return self._checked(Fraction(function(*(self._eval(a, depth + 1, source) for a in args))))
      case ast.Call(func=ast.Name(id=name)):
        raise CalculatorError(f"unknown function {name!r}; known: {', '.join(sorted(_FUNCTIONS))}")
      case ast.Name(id=name):
        raise CalculatorError(f"unknown name {name!r}: use numbers only")
      case _:
        raise CalculatorError(f"{type(node).__name__} is not allowed in an arithmetic expression")

  def _binary(self, op: ast.operator, a: Fraction, b: Fraction) -> Fraction:
    match op:
      case ast.Add():
        return a + b
      case ast.Sub():
        return a - b
      case ast.Mult():
        return a * b
      case ast.Div():
        return a / b
      case ast.FloorDiv():
        return Fraction(a // b)
      case ast.Mod():
        return a % b
      case ast.Pow():
        return self._power(a, b)
      case _:
        raise CalculatorError(f"operator {type(op).__name__} is not allowed")

  def _power(self, base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1:
      if base < 0:
        raise CalculatorError("fractional power of a negative number")
      return Fraction(float(base) ** float(exponent))
    e = int(exponent)
    if abs(e) > self.max_exponent:
      raise CalculatorError(f"exponent larger than {self.max_exponent}")
    bits = max(base.numerator.bit_length(), base.denominator.bit_length())
    if bits * abs(e) > self.max_bits:
      raise CalculatorError("result too large")
    return base**e


def format_number(value: Fraction) -> str:
  """As the paper's calculator prints: a float string, whole numbers as `24.0`."""
  if value.denominator == 1:
    return f"{value.numerator}.0"
  return repr(float(value))
