"""Built-in task: multi-hop questions over a generated fictional encyclopedia.

Names are made of random syllables, so no model can know the facts: it must
search. Each entity has one paragraph (the corpus); each question is 2 or 3
hops, and knows its gold sub-queries (one per hop) and answer.
"""

from __future__ import annotations

import dataclasses
import random

from swirl_jax.records import Question
from swirl_jax.records import Passage

_SYLLABLES = ["ka", "lo", "mir", "ven", "dra", "sel", "tor", "qui", "zan", "bel", "rho", "nal",
              "vex", "por", "gil", "tam", "wen", "sur", "fal", "kor", "lyn", "dax", "mun", "ith"]
_FIELDS = ["glassmaking", "astronomy", "river navigation", "clockwork", "botany", "cartography",
           "silk weaving", "bridge building"]


def _name(rng: random.Random, parts: int) -> str:
  return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()


@dataclasses.dataclass
class Encyclopedia:
  passages: list[Passage]
  questions: list[Question]


def build_encyclopedia(num_countries: int = 20, cities_per_country: int = 3, people: int = 200,
                       organizations: int = 200, seed: int = 0) -> Encyclopedia:
  """The corpus and every question it supports (shuffled deterministically)."""
  rng = random.Random(seed)
  used: set[str] = set()

  def unique(make):
    while True:
      value = make()
      if value not in used:
        used.add(value)
        return value

  countries = [unique(lambda: _name(rng, 3)) for _ in range(num_countries)]
  cities = {c: [unique(lambda: _name(rng, 2) + "a") for _ in range(cities_per_country)] for c in countries}
  city_country = {city: c for c, cs in cities.items() for city in cs}
  all_cities = list(city_country)
  persons = [unique(lambda: f"{_name(rng, 2)} {_name(rng, 3)}") for _ in range(people)]
  birthplace = {p: rng.choice(all_cities) for p in persons}
  field = {p: rng.choice(_FIELDS) for p in persons}
  orgs = [unique(lambda: f"{_name(rng, 2)} {rng.choice(['Guild', 'Company', 'Society', 'Works'])}")
          for _ in range(organizations)]
  founder = {o: rng.choice(persons) for o in orgs}
  headquarters = {o: rng.choice(all_cities) for o in orgs}
  year = {o: rng.randint(1400, 1990) for o in orgs}

  passages = []
  for c in countries:
    capital = cities[c][0]
    passages.append(Passage(c, f"{c} is a country. Its capital is {capital}. Other cities of {c} are "
                               f"{' and '.join(cities[c][1:])}."))
  for city, c in city_country.items():
    passages.append(Passage(city, f"{city} is a city in the country of {c}."))
  for p in persons:
    passages.append(Passage(p, f"{p} was born in the city of {birthplace[p]}. {p} worked in {field[p]}."))
  for o in orgs:
    passages.append(Passage(o, f"The {o} was founded in {year[o]} by {founder[o]}. "
                               f"Its headquarters are in {headquarters[o]}."))

  questions = []
  for i, o in enumerate(orgs):
    f = founder[o]
    questions.append(Question(
        f"ency-{seed}-{i}-a", f"In which city was the founder of the {o} born?", (birthplace[f],),
        "builtin_encyclopedia", (f"founder of the {o}", f"{f} born")))
    questions.append(Question(
        f"ency-{seed}-{i}-b", f"In which country was the founder of the {o} born?",
        (city_country[birthplace[f]],), "builtin_encyclopedia",
        (f"founder of the {o}", f"{f} born", f"{birthplace[f]} country")))
    questions.append(Question(
        f"ency-{seed}-{i}-c", f"What is the capital of the country where the {o} has its headquarters?",
        (cities[city_country[headquarters[o]]][0],), "builtin_encyclopedia",
        (f"headquarters of the {o}", f"{headquarters[o]} country",
         f"capital of {city_country[headquarters[o]]}")))
    questions.append(Question(
        f"ency-{seed}-{i}-d", f"In what field did the founder of the {o} work?", (field[f],),
        "builtin_encyclopedia", (f"founder of the {o}", f"{f} field")))
  rng.shuffle(questions)
  return Encyclopedia(passages, questions)


def encyclopedia_split(encyclopedia: Encyclopedia, split: str, test_fraction: float = 0.3) -> list[Question]:
  """A deterministic train / test split of the questions (the corpus is shared)."""
  cut = int(len(encyclopedia.questions) * (1 - test_fraction))
  return encyclopedia.questions[:cut] if split == "train" else encyclopedia.questions[cut:]
