"""The built-in `offline` model: a deterministic LangChain chat model that really solves arithmetic.

It reads the same prompts a real model reads and answers through the same structured-output path.
"""

from __future__ import annotations

import ast
import json
import math
import re
from fractions import Fraction
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool

from graphs import prompts

CANNOT_ANSWER = "cannot answer"

# Words people write for operators, turned into symbols before parsing. Longest phrases first.
_WORDS = [
    (r"\bto the power of\b", "**"),
    (r"\bmultiplied by\b", "*"),
    (r"\bdivided by\b", "/"),
    (r"\bmodulo\b|\bmod\b", "%"),
    (r"\bplus\b", "+"),
    (r"\bminus\b", "-"),
    (r"\btimes\b", "*"),
    (r"\bsquared\b", "**2"),
    (r"\bcubed\b", "**3"),
    ("×", "*"),
    ("÷", "/"),
    (r"\^", "**"),
    ("−", "-"),
]
_EXPRESSION = re.compile(r"[\d.\s+\-*/%()]+")
_OPERATOR = re.compile(r"\d\s*(\*\*|[+\-*/%])|[-(]\s*\d")
# A letter, digit or underscore right beside an expression: it is part of a number (1e3, 0x10, 1_000) or a
# word (x2) this model does not read.
_GLUED = re.compile(r"\w")
# Bounds that keep a hostile question from eating memory: 9**9**9 is a short string.
_MAX_EXPONENT = 1000
_MAX_DIGITS = 4000
# The same bound in bits, checked without turning the number into text: Python refuses to write an int of
# more than 4,300 digits as text (sys.get_int_max_str_digits), so a result past it could not even be shown.
_MAX_BITS = int(_MAX_DIGITS / math.log10(2))


class CannotAnswer(ValueError):
    """The question or step is outside what the offline model can solve."""


def _symbols(text: str) -> str:
    """Lower-cased, operator words as symbols, thousands separators dropped ('1,000 times 2' -> '1000 * 2'), on
    one line (Python's parser reads '1 +' and '2' on two lines as two statements)."""
    text = " ".join(text.lower().split())
    for pattern, symbol in _WORDS:
        text = re.sub(pattern, f" {symbol} ", text)
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000


def extract_expression(question: str) -> str:
    """The arithmetic expression inside a question, e.g. 'What is 17*23+4?' -> '17*23+4'.

    Only a question with exactly one, standing on its own: numbers written in a notation this model does not
    read (1e3, 0x10, 1_000) would otherwise be read in part - '1e308*10' as 308*10 - and the validator,
    reading the question the same way, would pass the wrong answer; and of two expressions ('2+2 and 3+3')
    one would be answered as if it were the whole question."""
    text = _symbols(question)
    candidates = [m for m in _EXPRESSION.finditer(text) if _OPERATOR.search(m.group())]
    if not candidates:
        raise CannotAnswer("no arithmetic expression in the question")
    if len(candidates) > 1:
        found = ", ".join(f"'{m.group().strip().rstrip('.').strip()}'" for m in candidates[:3])
        raise CannotAnswer(f"the question holds more than one expression ({found}): ask one at a time")
    expression = candidates[0].group().strip()
    start = candidates[0].start() + candidates[0].group().index(expression)
    end = start + len(expression)
    if _GLUED.match(text[start - 1:start] if start else "") or _GLUED.match(text[end:end + 1]):
        word = re.search(r"\w*\Z", text[:start]).group() + expression + re.match(r"\w*", text[end:]).group()
        raise CannotAnswer(f"'{word}' holds a number written in a way this model does not read "
                           "(only plain decimals like 1000 or 2.5 are read)")
    return expression.rstrip(".").strip()


def _parse(expression: str) -> ast.expr:
    try:
        return ast.parse(expression, mode="eval").body
    except SyntaxError:
        raise CannotAnswer(f"'{expression}' is not a well-formed expression") from None
    except RecursionError:  # Python's parser builds the tree recursively: some thousands of operations deep
        raise CannotAnswer("the expression is too long to read (it has thousands of operations)") from None


def _fold(root: ast.expr, visit) -> Any:
    """visit(node, its operands' results) for every node of an expression, operands first, left to right -
    without recursion: 1+2+...+n is a tree n deep (nested to the left), past Python's recursion limit once n
    nears a thousand."""
    stack: list[tuple[ast.expr, bool]] = [(root, False)]
    results: list[Any] = []
    while stack:
        node, ready = stack.pop()
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            operands = [node.left, node.right]
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operands = [node.operand]
        elif isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            operands = []
        else:
            raise CannotAnswer("only numbers and + - * / % ** are understood")
        if ready or not operands:
            taken = results[len(results) - len(operands):]
            del results[len(results) - len(operands):]
            results.append(visit(node, taken))
        else:
            stack.append((node, True))
            stack.extend((operand, False) for operand in reversed(operands))
    return results[0]


def format_number(value: Fraction) -> str:
    """Exact always: integers and terminating decimals as decimals, anything else as a fraction (1/3). A
    denominator of 2**a * 5**b ends after max(a, b) decimals: the value times 10**max(a, b) is a whole number,
    written with the point put back (decimal division at a guessed precision rounded 1/2**20 and 1/4096)."""
    if value.denominator == 1:
        return str(value.numerator)
    rest, places = value.denominator, 0
    for factor in (2, 5):
        count = 0
        while rest % factor == 0:
            rest, count = rest // factor, count + 1
        places = max(places, count)
    if rest != 1:
        return f"{value.numerator}/{value.denominator}"
    digits = str(abs(value.numerator) * 10**places // value.denominator).rjust(places + 1, "0")
    return f"{'-' if value < 0 else ''}{digits[:-places]}.{digits[-places:]}"


# What a result or a draft is: a decimal or a fraction, as format_number writes them (and a person typing one).
# Not Python's every form: Fraction("1e9999999") builds a ten-million-digit number before any bound is checked.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")


def parse_number(text: str) -> Fraction:
    cleaned = text.strip().rstrip(".").replace(" ", "")
    if not _NUMBER.fullmatch(cleaned) or len(cleaned) > 2 * _MAX_DIGITS:
        raise CannotAnswer(f"'{text}' is not a number")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        raise CannotAnswer(f"'{text}' is not a number") from None


def _apply(op: str, a: Fraction, b: Fraction | None = None) -> Fraction:
    result = _operate(op, a, b)
    if max(result.numerator.bit_length(), result.denominator.bit_length()) > _MAX_BITS:
        raise CannotAnswer("the result is too large")
    return result


def _operate(op: str, a: Fraction, b: Fraction | None = None) -> Fraction:
    if op == "add":
        return a + b
    if op == "subtract":
        return a - b
    if op == "multiply":
        return a * b
    if op == "negate":
        return -a
    if op in ("divide", "modulo") and b == 0:
        raise CannotAnswer("division by zero")
    if op == "divide":
        return a / b
    if op == "modulo":
        return a % b
    if b.denominator != 1 or abs(b) > _MAX_EXPONENT:
        raise CannotAnswer(f"exponent {format_number(b)} is not understood: only whole exponents from "
                           f"-{_MAX_EXPONENT} to {_MAX_EXPONENT} are")
    if a == 0 and b < 0:
        raise CannotAnswer("division by zero")
    # At least (bits - 1) * |b| bits: too large to be worth computing (1e1000 ** 1000 is a million digits).
    if max(a.numerator.bit_length(), a.denominator.bit_length(), 1) - 1 > _MAX_BITS // abs(b.numerator or 1):
        raise CannotAnswer("the result is too large")
    return a**b.numerator


_BINARY = {ast.Add: "add", ast.Sub: "subtract", ast.Mult: "multiply", ast.Div: "divide",
           ast.Mod: "modulo", ast.Pow: "power"}


def evaluate(expression: str) -> Fraction:
    """Exact value of an expression, computed independently of any plan (used to validate)."""

    def value(node: ast.expr, operands: list[Fraction]) -> Fraction:
        if isinstance(node, ast.Constant):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp):
            return -operands[0] if isinstance(node.op, ast.USub) else operands[0]
        return _apply(_BINARY[type(node.op)], *operands)

    return _fold(_parse(expression), value)


# A step's text names one operation on numbers or on earlier results. Each template is both
# how the planner writes a step and how the executor reads one back, so they cannot drift.
_OPERAND = r"(?:-?\d+(?:\.\d+)?|the result of step \d+)"
_TEMPLATES = {
    "add": "Add {a} and {b}",
    "subtract": "Subtract {b} from {a}",
    "multiply": "Multiply {a} by {b}",
    "divide": "Divide {a} by {b}",
    "modulo": "Take {a} modulo {b}",
    "power": "Raise {a} to the power of {b}",
    "negate": "Negate {a}",
}


def _step_pattern(template: str) -> re.Pattern[str]:
    regex = re.escape(template).replace(r"\{a\}", f"(?P<a>{_OPERAND})").replace(r"\{b\}", f"(?P<b>{_OPERAND})")
    return re.compile(f"^{regex}\\.?$", re.IGNORECASE)


# Other ways a person editing a plan (`fork --set plan.2=...`) writes one of those operations.
_ALIASES = [
    ("add", "Add {b} to {a}"),
    ("multiply", "Multiply {a} and {b}"),
]
_STEP_PATTERNS = [(op, _step_pattern(template)) for op, template in [*_TEMPLATES.items(), *_ALIASES]]
_REFERENCE = re.compile(r"\b(?:the\s+)?result\s+of\s+step\s+(\d+)\b", re.IGNORECASE)
# A step written as arithmetic: "the result of step 1 + 10", "Compute (the result of step 2) times 3."
_ARITHMETIC_STEP = re.compile(r"\s*(?:(?:compute|calculate|evaluate|work out)\s+)?(?P<expression>.*?)\s*[.=]?\s*",
                              re.IGNORECASE | re.DOTALL)


def make_plan(question: str) -> list[str]:
    """One step per operation, in the order precedence requires."""
    steps: list[str] = []

    def operand(node: ast.expr, operands: list[str]) -> str:
        """How a step names this node's value: a number, or the result of the step that computes it."""
        if isinstance(node, ast.Constant):
            return format_number(Fraction(str(node.value)))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd):
            return operands[0]
        if isinstance(node, ast.UnaryOp) and isinstance(node.operand, ast.Constant):
            return "-" + operands[0]
        if isinstance(node, ast.UnaryOp):
            steps.append(_TEMPLATES["negate"].format(a=operands[0]))
        else:
            a, b = operands
            steps.append(_TEMPLATES[_BINARY[type(node.op)]].format(a=a, b=b))
        return f"the result of step {len(steps)}"

    expression = extract_expression(question)
    evaluate(expression)  # refuse up front what cannot be computed (division by zero, huge powers)
    _fold(_parse(expression), operand)
    if not steps:
        raise CannotAnswer("there is no operation to carry out")
    return steps


def execute_step(step: str, results: list[str]) -> str:
    """Carry out one step of a plan, reading earlier results where the step refers to them: one operation as
    the planner writes it (or as _ALIASES do), else arithmetic over numbers and earlier results."""

    def result_of(number: str) -> Fraction:
        index = int(number) - 1
        if not 0 <= index < len(results):
            raise CannotAnswer(f"step {index + 1} has no result yet")
        return parse_number(results[index])

    def value(text: str) -> Fraction:
        ref = _REFERENCE.fullmatch(text)
        return result_of(ref.group(1)) if ref else parse_number(text)

    for op, pattern in _STEP_PATTERNS:
        match = pattern.match(step.strip())
        if match:
            args = [value(match.group(name)) for name in ("a", "b") if name in pattern.groupindex]
            return format_number(_apply(op, *args))
    # Arithmetic, the whole step (past a leading "Compute"): each earlier result goes in as an exact number in
    # parentheses, so "the result of step 1 * 2" doubles it whatever its sign or form (10/3 stays a fraction).
    text = _ARITHMETIC_STEP.fullmatch(step).group("expression")
    shape = _symbols(_REFERENCE.sub("(1)", text)).strip()
    if _EXPRESSION.fullmatch(shape) and _OPERATOR.search(shape):
        return format_number(evaluate(_symbols(_REFERENCE.sub(
            lambda ref: f"({format_number(result_of(ref.group(1)))})", text))))
    raise CannotAnswer(f"the step '{step}' is not an operation I can carry out: write one operation as a plan does "
                       "('Add the result of step 1 and 4'), or arithmetic ('the result of step 1 + 4')")


def check_answer(question: str, draft: str) -> dict[str, Any]:
    """Recompute the question from scratch and compare with the draft."""
    try:
        truth = evaluate(extract_expression(question))
    except CannotAnswer as exc:
        ok = draft.lower().startswith(CANNOT_ANSWER)
        return {"ok": ok, "answer": f"{CANNOT_ANSWER}: {exc}", "reason": str(exc)}
    expected = format_number(truth)
    try:
        drafted = parse_number(draft)
    except CannotAnswer:
        return {"ok": False, "answer": expected, "reason": f"the draft '{draft}' is not a number"}
    ok = drafted == truth
    reason = "recomputed independently: the draft matches" if ok else \
        f"recomputed independently: expected {expected}, the draft says {draft}"
    return {"ok": ok, "answer": expected, "reason": reason}


def respond(task: str, prompt: str) -> dict[str, Any]:
    """The structured answer for one request: `task` is the schema name, `prompt` the user text."""
    fields = prompts.read_fields(prompt)
    question = fields.get("question", "")
    if task == prompts.Plan.__name__:
        try:
            return {"steps": make_plan(question), "reason": ""}
        except CannotAnswer as exc:
            return {"steps": [], "reason": str(exc)}
    if task == prompts.StepResult.__name__:
        try:
            return {"result": execute_step(fields["step"], fields.get("results", []))}
        except (CannotAnswer, KeyError) as exc:
            return {"result": f"{CANNOT_ANSWER}: {exc}"}
    if task == prompts.Verdict.__name__:
        return check_answer(question, fields.get("draft", ""))
    raise ValueError(f"the offline model has no answer for a '{task}' request")


def count_tokens(text: str) -> int:
    """A stable stand-in for a tokenizer: about one token per four characters, as OpenAI estimates."""
    return max(1, (len(text) + 3) // 4)


class OfflineChatModel(BaseChatModel):
    """Answers plan / step / verdict requests by computing them; deterministic, no network."""

    model_name: str = "offline"

    @property
    def _llm_type(self) -> str:
        return "offline"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def bind_tools(self, tools, *, tool_choice=None, **kwargs):
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], tool_choice=tool_choice, **kwargs)

    def _generate(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs) -> ChatResult:
        tools = kwargs.get("tools") or []
        if len(tools) != 1:
            raise ValueError("the offline model answers only structured requests (one tool)")
        task = tools[0]["function"]["name"]
        prompt = "\n".join(str(m.content) for m in messages)
        answer = respond(task, str(messages[-1].content))
        arguments = json.dumps(answer)
        usage = {"input_tokens": count_tokens(prompt), "output_tokens": count_tokens(arguments)}
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        message = AIMessage(
            content="",
            tool_calls=[{"name": task, "args": answer, "id": f"call_{task.lower()}", "type": "tool_call"}],
            usage_metadata=usage,
            response_metadata={"model_name": self.model_name},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])
