"""Rule matchers for final answers: numbers for math, normalized text and token F1 for QA.

These need no model: they grade built-in tasks and GSM8K-style answers, and
serve as the outcome judge where a gold answer is a number or a short span.
"""

from __future__ import annotations

import collections
import re
import string
from fractions import Fraction
from typing import Sequence

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?")
_FRACTION = re.compile(r"(?<![\w./])([-+]?\d+)\s*/\s*(\d+)(?![\w/]|\.\d)")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _bounded(literal: str, max_digits: int = 64, max_exponent: int = 400) -> bool:
  """Whether a number literal is small enough to convert at once (checked before converting)."""
  mantissa, _, exponent = literal.lower().partition("e")
  if exponent and abs(int(exponent[:8])) > max_exponent:
    return False
  return sum(c.isdigit() for c in mantissa) <= max_digits


def parse_number(text: str) -> Fraction | None:
  """The number a short answer states: '$1,000.50', '10 apples', '-3', '50%', '3/4'.

  Returns None when the text holds no number or more than one distinct number.
  """
  cleaned = text.strip().replace("$", "").replace("\u20ac", "").replace("\u00a3", "")
  cleaned = cleaned.rstrip(".").strip()
  fraction = re.fullmatch(r"\s*([-+]?\d+)\s*/\s*(\d+)\s*", cleaned)
  if fraction is None:  # one fraction in a sentence ("The answer is 3/4."), and no other number
    fractions = list(_FRACTION.finditer(cleaned))
    if len(fractions) == 1 and not re.search(r"\d", _FRACTION.sub(" ", cleaned)):
      fraction = fractions[0]
  if fraction and not (_bounded(fraction.group(1)) and _bounded(fraction.group(2))):
    return None
  if fraction and int(fraction.group(2)) != 0:
    return Fraction(int(fraction.group(1)), int(fraction.group(2)))
  found = [m.group(0).replace(",", "") for m in _NUMBER.finditer(cleaned) if re.search(r"\d", m.group(0))]
  if any(not _bounded(f) for f in found):  # "1e9999999" would take seconds to convert, and is no answer
    return None
  values = {Fraction(f) for f in found}
  if len(values) != 1:
    return None
  return values.pop()


def numbers_match(predicted: str, gold: str) -> bool:
  """'10' == '10.00' == '$10' == '10 dollars'; '1,000' == '1000'."""
  a, b = parse_number(predicted), parse_number(gold)
  return a is not None and a == b


def normalize_text(text: str) -> str:
  """SQuAD-style: lower case, no punctuation, no articles, single spaces."""
  text = text.lower()
  text = "".join(ch for ch in text if ch not in set(string.punctuation))
  text = _ARTICLES.sub(" ", text)
  return " ".join(text.split())


def exact_match(predicted: str, golds: Sequence[str]) -> bool:
  return any(normalize_text(predicted) == normalize_text(g) for g in golds)


def token_f1(predicted: str, golds: Sequence[str]) -> float:
  """Best token-overlap F1 against any gold answer (aliases included)."""
  best = 0.0
  predicted_tokens = normalize_text(predicted).split()
  for gold in golds:
    gold_tokens = normalize_text(gold).split()
    common = collections.Counter(predicted_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if not predicted_tokens or not gold_tokens:
      best = max(best, float(predicted_tokens == gold_tokens))
      continue
    if overlap == 0:
      continue
    precision, recall = overlap / len(predicted_tokens), overlap / len(gold_tokens)
    best = max(best, 2 * precision * recall / (precision + recall))
  return best


def answer_correct(predicted: str | None, golds: Sequence[str]) -> bool:
  """Numbers compare as numbers when the gold is numeric; otherwise normalized exact match."""
  if predicted is None or not golds:
    return False
  if is_numeric(golds[0]):
    return numbers_match(predicted, golds[0])
  return exact_match(predicted, golds)


def is_numeric(answer: str) -> bool:
  """Whether an answer is just a number (currency signs, commas, % and a/b allowed)."""
  if re.fullmatch(r"\s*[-+]?\d+\s*/\s*\d+\s*", answer):
    return True
  return re.fullmatch(r"[-+]?[$\u20ac\u00a3]?\s*(\d{1,3}(,\d{3})+|\d+)?(\.\d+)?\s*%?", answer.strip()) is not None \
      and re.search(r"\d", answer) is not None
