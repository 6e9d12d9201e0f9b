"""The chain-of-thought graph: analyze -> execute (one step per super-step) -> validate.

Each node makes exactly one model call, so each call is its own checkpoint and a crash repeats at most one.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel

from graphs import prompts

NODES = ("analyze", "execute", "validate")
USAGE_KEYS = ("llm_calls", "input_tokens", "output_tokens")


def add_usage(old: dict | None, new: dict | None) -> dict:
    """Usage accumulates over the whole thread: every call adds to it, nothing resets it."""
    old, new = old or {}, new or {}
    return {key: old.get(key, 0) + new.get(key, 0) for key in USAGE_KEYS}


class State(TypedDict, total=False):
    question: str
    plan: list[str]
    results: list[str]
    draft: str
    answer: str
    validation: dict  # {"ok": bool, "answer": str, "reason": str}
    revisions: int
    usage: Annotated[dict, add_usage]


def fresh_state(question: str) -> State:
    """The input that starts a run: every field set, so a new run on an old thread inherits nothing."""
    return State(question=question, plan=[], results=[], draft="", answer="", validation={}, revisions=0)


class ModelOutputError(RuntimeError):
    """The model's reply did not fit the requested structure."""


def _usage_of(raw: Any) -> dict:
    meta = getattr(raw, "usage_metadata", None) or {}
    return {"llm_calls": 1, "input_tokens": meta.get("input_tokens", 0), "output_tokens": meta.get("output_tokens", 0)}


def _parsed(schema: type[BaseModel], out: dict) -> BaseModel:
    if out.get("parsing_error") is not None or out.get("parsed") is None:
        raise ModelOutputError(f"the model's reply is not a valid {schema.__name__}: {out.get('parsing_error')}")
    return out["parsed"]


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


def _node(name: str, model: BaseChatModel, method: str, request: Callable, apply: Callable) -> RunnableLambda:
    structured: dict = {}

    def runnable(schema):
        if schema not in structured:
            structured[schema] = model.with_structured_output(schema, method=method, include_raw=True)
        return structured[schema]

    def sync(state: State, config: RunnableConfig) -> dict:
        schema, messages = request(state)
        out = runnable(schema).invoke(messages, config)
        return {**apply(state, _parsed(schema, out)), "usage": _usage_of(out["raw"])}

    async def async_(state: State, config: RunnableConfig) -> dict:
        schema, messages = request(state)
        out = await runnable(schema).ainvoke(messages, config)
        return {**apply(state, _parsed(schema, out)), "usage": _usage_of(out["raw"])}

    return RunnableLambda(sync, afunc=async_, name=name)


def _after_analyze(state: State) -> str:
    return "execute" if state.get("plan") else END


def _after_execute(state: State) -> str:
    return "execute" if len(state.get("results", [])) < len(state.get("plan", [])) else "validate"


def _after_validate(state: State) -> str:
    return END if state.get("answer") else "analyze"


def build_graph(model: BaseChatModel, *, structured_output: str = "json_schema", max_revisions: int = 2) -> StateGraph:
    """The reasoning graph, uncompiled: the caller compiles it with whatever checkpointer it has."""
    builder = StateGraph(State)
    builder.add_node("analyze", _node("analyze", model, structured_output, _analyze_request, _analyze_apply))
    builder.add_node("execute", _node("execute", model, structured_output, _execute_request, _execute_apply))
    builder.add_node(
        "validate",
        _node("validate", model, structured_output, _validate_request, _make_validate_apply(max_revisions)),
    )
    builder.add_edge(START, "analyze")
    builder.add_conditional_edges("analyze", _after_analyze, ["execute", END])
    builder.add_conditional_edges("execute", _after_execute, ["execute", "validate"])
    builder.add_conditional_edges("validate", _after_validate, ["analyze", END])
    return builder
