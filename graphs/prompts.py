"""Prompt templates and structured-output schemas for the chain-of-thought graph.

Prompts are plain labelled sections, so any model (and the offline one) can read them back.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

SYSTEM = (
    "You are a careful reasoner. You solve a question in small, explicit steps, "
    "one operation per step, and you never guess a result you did not compute."
)


class Plan(BaseModel):
    """The steps that answer the question, in the order they must be carried out."""

    steps: list[str] = Field(
        description="One operation per step. Refer to an earlier step's outcome as "
        "'the result of step N'. Empty if the question cannot be answered."
    )
    reason: str = Field(default="", description="If there are no steps: why the question cannot be answered.")


class StepResult(BaseModel):
    """The outcome of carrying out one step of the plan."""

    result: str = Field(description="The result only: a number when the step is arithmetic.")


class Verdict(BaseModel):
    """An independent check of the draft answer."""

    ok: bool = Field(description="True only if the draft answer is correct.")
    answer: str = Field(description="The correct answer, as you computed it yourself.")
    reason: str = Field(description="One sentence: how you checked.")


def _numbered(items: list[str]) -> str:
    return "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1)) or "(none)"


def _messages(user: str) -> list[tuple[str, str]]:
    return [("system", SYSTEM), ("user", user)]


def plan_messages(question: str, feedback: str = "") -> list[tuple[str, str]]:
    retry = f"\n\nA previous attempt was judged wrong: {feedback}\nPlan again from scratch." if feedback else ""
    return _messages(
        f"Question: {question}{retry}\n\n"
        "Write the plan: the shortest list of steps that answers the question, one operation per step, "
        "in the order they must be done. Refer to an earlier step's outcome as 'the result of step N'. "
        "If the question cannot be answered, return an empty list."
    )


def step_messages(question: str, plan: list[str], results: list[str], index: int) -> list[tuple[str, str]]:
    return _messages(
        f"Question: {question}\n\nPlan:\n{_numbered(plan)}\n\nResults so far:\n{_numbered(results)}\n\n"
        f"Carry out step {index + 1}: {plan[index]}\n"
        "Reply with the result of this step only."
    )


def verdict_messages(question: str, plan: list[str], results: list[str], draft: str) -> list[tuple[str, str]]:
    return _messages(
        f"Question: {question}\n\nPlan:\n{_numbered(plan)}\n\nResults:\n{_numbered(results)}\n\n"
        f"Draft answer: {draft}\n\n"
        "Check the draft answer by solving the question again yourself, independently of the plan."
    )


# Each labelled value runs to where the template goes on, so a value of several lines (a question pasted with
# line breaks, a step edited to span two) is read whole, not cut at its first line break.
_FIELDS = {
    "question": re.compile(r"^Question: (.*?)\n\n(?:A previous attempt was judged wrong: |Plan:\n|Write the plan: )",
                           re.MULTILINE | re.DOTALL),
    "step": re.compile(r"^Carry out step \d+: (.*?)\nReply with the result of this step only\.$",
                       re.MULTILINE | re.DOTALL),
    "draft": re.compile(r"^Draft answer: (.*?)\n\nCheck the draft answer", re.MULTILINE | re.DOTALL),
}
_LIST = re.compile(r"^(?:Results so far|Results):\n(.*?)\n\n(?:Carry out step|Draft answer)", re.MULTILINE | re.DOTALL)
_ITEM = re.compile(r"^\d+\. ", re.MULTILINE)


def read_fields(prompt: str) -> dict:
    """The labelled sections of a prompt written above: question, step, results, draft."""
    fields: dict = {key: match.group(1).strip() for key, pattern in _FIELDS.items()
                    if (match := pattern.search(prompt)) is not None}
    match = _LIST.search(prompt)
    if match and match.group(1) != "(none)":
        fields["results"] = [item.strip() for item in _ITEM.split(match.group(1))[1:]]
    return fields
