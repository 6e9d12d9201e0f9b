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


# A labelled value runs to where the template goes on, so a value of several lines (a question pasted with
# line breaks, a step edited to span two) is read whole, not cut at its first line break. The question opens
# a prompt, so it ends at the first section after it; the step, the results and the draft come after the
# question and the plan, so they are read from their last header on - text in a question or a plan that looks
# like a later section ("Carry out step 1: ...") is not taken for it.
_QUESTION = re.compile(r"Question: (.*?)\n\n(?:A previous attempt was judged wrong: |Plan:\n|Write the plan: )",
                       re.DOTALL)
_HEADERS = {"step": re.compile(r"^Carry out step \d+: ", re.MULTILINE),
            "draft": re.compile(r"^Draft answer: ", re.MULTILINE),
            "results": re.compile(r"^(?:Results so far|Results):\n", re.MULTILINE)}
_ENDS = {"step": re.compile(r"\nReply with the result of this step only\.$"),
         "draft": re.compile(r"\n\nCheck the draft answer by solving the question again"),
         "results": re.compile(r"\n\n(?:Carry out step \d+|Draft answer): ")}
_ITEM = re.compile(r"^\d+\. ", re.MULTILINE)


def _section(name: str, prompt: str) -> str | None:
    """The text after the last header of section `name`, up to where its template goes on."""
    start = None
    for start in _HEADERS[name].finditer(prompt):
        pass
    if start is None or (end := _ENDS[name].search(prompt, start.end())) is None:
        return None
    return prompt[start.end():end.start()]


def read_fields(prompt: str) -> dict:
    """The labelled sections of a prompt written above: question, step, results, draft."""
    fields: dict = {}
    if match := _QUESTION.match(prompt):
        fields["question"] = match.group(1).strip()
    for name in ("step", "draft"):
        if (text := _section(name, prompt)) is not None:
            fields[name] = text.strip()
    if (listed := _section("results", prompt)) is not None and listed != "(none)":
        fields["results"] = [item.strip() for item in _ITEM.split(listed)[1:]]
    return fields
