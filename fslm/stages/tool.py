"""The `tool` stage's calculator: arithmetic found in a text, computed by a small evaluator over Python's `ast`.

Only numbers, + - * / // % **, parentheses and unary signs are accepted; never `eval` or `exec`. Every bound is
checked BEFORE the operation that could exceed it (an expression's length, a power's size, every intermediate
result's magnitude), so hostile text (`9**9**9**9`, 10k nested parentheses) costs microseconds and ends in a
recorded error, never an exception or a hang. Output lines look like `48 / 2 = 24`, for later stages to read.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass

MAX_EXPRESSION_CHARS = 200
MAX_MAGNITUDE = 10**18  # any intermediate or final result beyond this is refused ("too large")
MAX_POWER_BITS = 64  # a power whose result would need more bits than this is refused before it is computed
NO_ARITHMETIC = "(no arithmetic found)"

# A run of arithmetic characters. One character class, so matching is linear in the text's length.
_CANDIDATE = re.compile(r"[0-9.,()+\-*/%×÷− \t]+")
_SPLIT = re.compile(r",|(?<=[0-9.)])[ \t]+(?=[0-9.(])")
_OPERATION = re.compile(r"[0-9.)] ?(?:\*\*|//|[+\-*/%]) ?[-+( ]*[0-9.(]")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}


class CalcError(ValueError):
    """An expression the calculator refuses or cannot compute; the message is one short line."""


@dataclass(frozen=True)
class Calculation:
    expression: str
    value: str | None  # the formatted result, None when it failed
    error: str | None = None

    @property
    def line(self) -> str:
        if self.error is None:
            return f"{self.expression} = {self.value}"
        shown = self.expression if len(self.expression) <= 60 else self.expression[:57] + "..."
        return f"{shown}: {self.error}"


Number = int | float


def evaluate(expression: str) -> Number:
    """The value of an arithmetic expression, or CalcError (never any other exception)."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalcError(f"longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise CalcError("not an arithmetic expression") from None
    try:
        return _check(_eval(tree.body))
    except RecursionError:
        raise CalcError("nested too deeply") from None
    except (OverflowError, ZeroDivisionError):  # guarded above; kept so no arithmetic corner escapes as a crash
        raise CalcError("not computable") from None


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _check(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and (isinstance(node.op, ast.Pow) or type(node.op) in _BINARY):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _check(_power(left, right))
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise CalcError("division by zero")
        return _check(_BINARY[type(node.op)](left, right))
    raise CalcError("only numbers, + - * / // % ** and parentheses are allowed")


def _power(base: Number, exponent: Number) -> Number:
    """base ** exponent, refused before computing when the result could not fit MAX_POWER_BITS (or be complex)."""
    if exponent != int(exponent):
        raise CalcError("only whole-number powers")
    exp = int(exponent)
    if base == 0 and exp < 0:
        raise CalcError("division by zero")
    magnitude = abs(base)
    if magnitude not in (0, 1) and exp * math.log2(magnitude) > MAX_POWER_BITS:  # also 0.5 ** -100
        raise CalcError("power too large")
    if isinstance(base, float) or exp < 0:
        return float(base) ** exp
    return base**exp


def _check(value: Number) -> Number:
    if isinstance(value, float) and not math.isfinite(value):
        raise CalcError("not a finite number")
    if abs(value) > MAX_MAGNITUDE:
        raise CalcError("too large")
    return value


def format_number(value: Number) -> str:
    """24.0 -> '24', 1/3 -> '0.333333': whole numbers without a point, others rounded to 6 decimals."""
    if isinstance(value, float):
        rounded = round(value, 6)
        if rounded == int(rounded):
            return str(int(rounded))
        return f"{rounded:.6f}".rstrip("0").rstrip(".")
    return str(value)


def find_expressions(text: str, limit: int) -> list[str]:
    """Arithmetic expressions in free text, in order, at most `limit`: runs of number and operator characters on
    one line that hold an operator between two numbers. A run is split where a comma (not a thousands separator) or
    a bare space separates two numbers ('in 2023, 5 + 3' -> '5 + 3'). A hyphenated '3-4' counts: it is arithmetic."""
    found: list[str] = []
    for match in _CANDIDATE.finditer(text):
        for piece in _SPLIT.split(_THOUSANDS.sub("", match.group())):
            expr = _tidy(piece)
            if len(expr) > MAX_EXPRESSION_CHARS:
                expr = expr[: MAX_EXPRESSION_CHARS + 1]  # evaluate() refuses it; the error line stays short
            elif not _OPERATION.search(expr):
                continue
            if expr and expr not in found:
                found.append(expr)
                if len(found) >= limit:
                    return found
    return found


def _tidy(run: str) -> str:
    """A run without the ends that belong to the surrounding words: 'costs $5 * 3.' -> '5 * 3', 'x - 5' -> '5'."""
    run = " ".join(run.replace("×", "*").replace("÷", "/").replace("−", "-").split())
    run = run.rstrip(" +-*/%.(").lstrip(" +*/%)")  # strip, not a loop: linear on a run of 100k parentheses
    return run[2:] if run.startswith("- ") else run


def calculate(expression: str) -> Calculation:
    try:
        return Calculation(expression, format_number(evaluate(expression)))
    except CalcError as err:
        return Calculation(expression, None, str(err))


def calculator(text: str, limit: int = 16) -> tuple[str, tuple[str, ...]]:
    """(the lines later stages read, the errors recorded in the trace) for every expression found in `text`."""
    done = [calculate(expr) for expr in find_expressions(text, limit)]
    lines = [c.line for c in done if c.error is None]
    errors = tuple(c.line for c in done if c.error is not None)
    return ("\n".join(lines) if lines else NO_ARITHMETIC), errors
