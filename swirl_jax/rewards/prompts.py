"""Judge prompts, in our own words: process (one per tool) and outcome."""

from __future__ import annotations

PROCESS_MATH = """You are checking one step of a solution to a math word problem. The solver works in steps; each step either computes an arithmetic expression with a calculator (<math_exp>...</math_exp>) or gives the final answer (<answer>...</answer>).

Problem and the steps so far:
{context}

The next step:
{action}

Is this step reasonable given what came before? A reasonable step uses the right numbers and operation, moves the solution forward without repeating work, and answers only when the answer follows from the work shown. You do not know the correct final answer; judge the step on its own merits.
Think briefly, then end with a line "VERDICT: GOOD" or "VERDICT: BAD"."""

PROCESS_SEARCH = """You are checking one step of a research process that answers a question by searching. Each step either issues a search query (<search_query>...</search_query>) or gives the final answer (<answer>...</answer>).

Question and the steps so far, with search results:
{context}

The next step:
{action}

Is this step reasonable given what came before? A reasonable query looks for information still missing and is specific enough to find it; a reasonable answer is supported by the results found. You do not know the correct answer; judge the step on its own merits.
Think briefly, then end with a line "VERDICT: GOOD" or "VERDICT: BAD"."""

OUTCOME = """Question: {question}
Correct answer: {gold}
Proposed answer: {answer}

Does the proposed answer mean the same as the correct answer? Small differences in wording, units or formatting do not matter.
Think briefly, then end with a line "VERDICT: YES" or "VERDICT: NO"."""


def process_prompt(context: str, action: str, tool: str) -> str:
  template = PROCESS_SEARCH if tool == "search_query" or "<search_query>" in context else PROCESS_MATH
  return template.format(context=context, action=action)


def outcome_prompt(question: str, answer: str, gold: str) -> str:
  return OUTCOME.format(question=question, gold=gold, answer=answer)
