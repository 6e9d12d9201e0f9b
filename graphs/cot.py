"""The chain-of-thought graph: analyze -> execute (one step per super-step) -> validate.

Each node makes exactly one model call, so each call is its own checkpoint and a crash repeats at most one.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Callable, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.graph import END, START, StateGraph

from graphs import prompts
from graphs.ask import Ask, Price, ReplyCache, Retry

NODES = ("analyze", "execute", "validate")
# cached_calls: requests answered from the reply cache, which cost nothing and are not in llm_calls.
USAGE_KEYS = ("llm_calls", "input_tokens", "output_tokens", "cached_calls", "cost_usd")


def add_usage(old: dict | None, new: dict | None) -> dict:
    """Usage accumulates over the whole thread: every call adds to it, nothing resets it."""
    old, new = old or {}, new or {}
    total = {key: old.get(key, 0) + new.get(key, 0) for key in USAGE_KEYS}
    total["cost_usd"] = round(total["cost_usd"], 10)  # sums of float prices drift in the last digits
    return total


class State(TypedDict, total=False):
    question: str
    plan: list[str]
    results: list[str]
    draft: str
    answer: str
    validation: dict  # {"ok": bool, "answer": str, "reason": str}
    revisions: int
    usage: Annotated[dict, add_usage]


# What an edit may set (`fork --set`): every field but usage, which the agent counts and an edit cannot change.
EDITABLE = ("question", "plan", "results", "draft", "answer", "validation", "revisions")


# The fields whose values are numbers written as text: `--set results.1=6` means the text "6" (as typed: 1e5
# stays "1e5", where the JSON number would be written back as "100000.0").
NUMBER_TEXTS = ("draft", "answer", "results")


def numbers_as_text(state: dict) -> dict:
    """An edited state with numbers written where text goes as that text: `--set answer=400` and
    `--set results.1=6` parse as JSON numbers, and mean "400" and "6". Only where a value is a number (a
    draft, an answer, a step's result): a number for a question or a plan step is still refused."""
    def text(value: Any) -> Any:
        return json.dumps(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    fixed = dict(state)
    for key in ("draft", "answer"):
        if key in fixed:
            fixed[key] = text(fixed[key])
    if isinstance(fixed.get("results"), list):
        fixed["results"] = [text(v) for v in fixed["results"]]
    return fixed


def state_problem(state: dict) -> str | None:
    """What is wrong with an edited state's fields, if anything (a plan that is not a list of texts, say)."""
    texts = {"question", "draft", "answer"}
    for key, value in state.items():
        if key in texts and not isinstance(value, str):
            return f"'{key}' must be text, not {json.dumps(value)}"
        if key in ("plan", "results") and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return f"'{key}' must be a list of texts, not {json.dumps(value)}"
        if key == "validation" and not isinstance(value, dict):
            return f"'validation' must be a table, not {json.dumps(value)}"
        if key == "revisions" and not (type(value) is int and value >= 0):
            return f"'revisions' must be a whole number from 0, not {json.dumps(value)}"
    if not str(state.get("question", "")).strip():
        return "'question' must not be empty"
    return None


def fresh_state(question: str) -> State:
    """The input that starts a run: every field set, so a new run on an old thread inherits nothing."""
    return State(question=question, plan=[], results=[], draft="", answer="", validation={}, revisions=0)


# Each node is a pair: `request(state)` -> (schema, messages), and `apply(state, reply)` -> state update.
def _analyze_request(state: State):
    feedback = (state.get("validation") or {}).get("reason", "") if state.get("revisions") else ""
    return prompts.Plan, prompts.plan_messages(state["question"], feedback)


def _analyze_apply(state: State, reply: prompts.Plan) -> dict:
    steps = [s.strip() for s in reply.steps if s.strip()]
    update: dict = {"plan": steps, "results": [], "draft": "", "validation": {}}
    if not steps:
        update["answer"] = f"cannot answer: {reply.reason.strip() or 'no plan could be made'}"
    return update


def _execute_request(state: State):
    results = state.get("results", [])
    return prompts.StepResult, prompts.step_messages(state["question"], state["plan"], results, len(results))


def _execute_apply(state: State, reply: prompts.StepResult) -> dict:
    results = [*state.get("results", []), reply.result.strip()]
    return {"results": results, "draft": results[-1]}


def _validate_request(state: State):
    return prompts.Verdict, prompts.verdict_messages(
        state["question"], state["plan"], state.get("results", []), state.get("draft", "")
    )


def _make_validate_apply(max_revisions: int):
    def apply(state: State, reply: prompts.Verdict) -> dict:
        verdict = reply.model_dump()
        revisions = state.get("revisions", 0)
        if verdict["ok"] or revisions >= max_revisions:
            # Out of revisions, the draft stands and the verdict says it is doubtful.
            return {"validation": verdict, "answer": state.get("draft", "")}
        return {"validation": verdict, "revisions": revisions + 1}

    return apply


def _node(name: str, ask: Ask, request: Callable, apply: Callable) -> RunnableLambda:
    def sync(state: State, config: RunnableConfig) -> dict:
        schema, messages = request(state)
        reply, usage = ask(name, schema, messages, state.get("usage") or {}, config)
        return {**apply(state, reply), "usage": usage}

    async def async_(state: State, config: RunnableConfig) -> dict:
        schema, messages = request(state)
        reply, usage = await ask.acall(name, schema, messages, state.get("usage") or {}, config)
        return {**apply(state, reply), "usage": usage}

    return RunnableLambda(sync, afunc=async_, name=name)


def _after_analyze(state: State) -> str:
    return "execute" if state.get("plan") else END


def _after_execute(state: State) -> str:
    return "execute" if len(state.get("results", [])) < len(state.get("plan", [])) else "validate"


def _after_validate(state: State) -> str:
    return END if state.get("answer") else "analyze"


def _first_difference(old: list, new: list) -> int:
    """Index of the first item that differs (len of the shorter list when one is a prefix of the other)."""
    for index, (a, b) in enumerate(zip(old, new)):
        if a != b:
            return index
    return min(len(old), len(new))


def plan_edit(old: State, new: State) -> tuple[dict, str | None]:
    """Make an edit of the state consistent: what was derived from an edited field is dropped, to be redone.

    Returns the state update and the node to attribute it to (which decides what runs next):
    - question edited: everything is redone from analyze;
    - plan edited: results from the first changed step on are dropped, execution resumes there;
    - results edited: results after the edited one are dropped, execution resumes after it;
    - anything else is written as given.
    """
    changed = {key for key in set(old) | set(new) if key != "usage" and old.get(key) != new.get(key)}
    update: dict = {key: new.get(key) for key in changed}
    if "question" in changed:
        update.update(plan=[], results=[], draft="", answer="", validation={}, revisions=0)
        return update, START
    if "plan" in changed or "results" in changed:
        plan, results = new.get("plan", []), new.get("results", [])
        keep = _first_difference(old.get("plan", []), plan)
        if "results" in changed:
            keep = min(keep, _first_difference(old.get("results", []), results) + 1)
        results = results[:keep]
        update.update(plan=plan, results=results, draft=results[-1] if results else "", answer="", validation={})
        return update, "execute" if results else "analyze"
    return update, None


def build_graph(
    model: BaseChatModel,
    *,
    structured_output: str = "json_schema",
    max_revisions: int = 2,
    cache: ReplyCache | None = None,
    model_id: str = "",
    retry: Retry | None = None,
    price: Price | None = None,
) -> StateGraph:
    """The reasoning graph, uncompiled: the caller compiles it with whatever checkpointer it has.

    `cache` answers repeated requests without the model; `model_id` names the model in cache keys (it must
    change whenever the same request could get a different reply: model name, endpoint). `retry` says how
    passing faults are retried; `price` turns tokens into dollars for usage and budgets.
    """
    ask = Ask(model, model_id or model.get_name(), structured_output, cache, retry or Retry(), price or Price())
    builder = StateGraph(State)
    builder.add_node("analyze", _node("analyze", ask, _analyze_request, _analyze_apply))
    builder.add_node("execute", _node("execute", ask, _execute_request, _execute_apply))
    builder.add_node("validate", _node("validate", ask, _validate_request, _make_validate_apply(max_revisions)))
    builder.add_edge(START, "analyze")
    builder.add_conditional_edges("analyze", _after_analyze, ["execute", END])
    builder.add_conditional_edges("execute", _after_execute, ["execute", "validate"])
    builder.add_conditional_edges("validate", _after_validate, ["analyze", END])
    return builder
