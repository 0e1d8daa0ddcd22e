"""Built-in task: arithmetic word problems that need the calculator for 2-6 steps.

Deterministic from a seed, no download. Every problem knows its gold answer and
one expression per step, so the quality of each step can be judged by rule.
"""

from __future__ import annotations

import hashlib
import random

from swirl_jax.records import Question

_PEOPLE = ["Ada", "Bram", "Chiara", "Dev", "Elif", "Femi", "Goran", "Hana", "Ivo", "Jun", "Kaia",
           "Lior", "Mona", "Nils", "Oona", "Pavel", "Quinn", "Rosa", "Sami", "Tove"]
_ITEMS = ["apples", "marbles", "stickers", "books", "coins", "shells", "pencils", "cards",
          "stamps", "beads", "cookies", "buttons"]
_THEN = ["Then", "Next,", "After that,", "Later,"]


def _problem(rng: random.Random, steps: int) -> tuple[str, int, list[str]]:
  person, item = rng.choice(_PEOPLE), rng.choice(_ITEMS)
  boxes, per_box = rng.randint(2, 9), rng.randint(3, 25)
  value = boxes * per_box
  sentences = [f"{person} has {boxes} boxes with {per_box} {item} in each box."]
  expressions = [f"{boxes} * {per_box}"]
  for _ in range(steps - 1):
    kind = rng.choice(["add", "sub", "mul", "div"])
    if kind == "div":
      divisors = [d for d in range(2, 7) if value % d == 0 and value // d > 1]
      if not divisors:
        kind = "add"
      else:
        d = rng.choice(divisors)
        sentences.append(f"{rng.choice(_THEN)} {person} shares the {item} equally among {d} friends "
                         "and keeps one share.")
        expressions.append(f"{value} / {d}")
        value //= d
        continue
    if kind == "sub" and value > 3:
      n = rng.randint(1, value - 1)
      sentences.append(f"{rng.choice(_THEN)} {person} gives away {n} {item}.")
      expressions.append(f"{value} - {n}")
      value -= n
    elif kind == "mul" and value < 400:
      m = rng.randint(2, 4)
      sentences.append(f"A friend gives {person} enough {item} to make the collection {m} times as large.")
      expressions.append(f"{value} * {m}")
      value *= m
    else:
      n = rng.randint(5, 120)
      sentences.append(f"{rng.choice(_THEN)} {person} buys {n} more {item}.")
      expressions.append(f"{value} + {n}")
      value += n
  sentences.append(f"How many {item} does {person} have now?")
  return " ".join(sentences), value, expressions


_TEST_SHARE = 16  # one problem text in 16 may be a test problem, the others only train problems


def _is_test_text(text: str) -> bool:
  return hashlib.blake2b(text.encode(), digest_size=8).digest()[0] % _TEST_SHARE == 0


def arithmetic_questions(num: int, seed: int = 0, min_steps: int = 2, max_steps: int = 6,
                         split: str = "train") -> list[Question]:
  """`num` problems; the split is mixed into the seed so train and test differ.

  The texts of the test split and of every other split never meet: a hash of
  the text decides which side a problem may be drawn for.
  """
  rng = random.Random(f"{seed}:{split}")
  questions = []
  for i in range(num):
    while True:
      text, answer, expressions = _problem(rng, rng.randint(min_steps, max_steps))
      if _is_test_text(text) == (split == "test"):
        break
    questions.append(Question(f"arith-{split}-{seed}-{i}", text, (str(answer),),
                              "builtin_arithmetic", tuple(expressions)))
  return questions
