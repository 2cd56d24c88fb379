"""Rules as data: YAML rule files, validated, with CEL conditions compiled once.

A rule file holds ``rules:``, a list of rules (schema: ``rule_file.schema.json``).
Loading checks every file against that schema, compiles every CEL expression
and refuses duplicate ids; any problem raises :class:`RuleFileError` naming the
file, the rule and the field, and saying what to do. Evaluation is pure: the
caller gives the event, the customer's state before it and ``now`` as plain
values and gets the matches back; an expression that fails at run time (a
missing field, a wrong type) is reported, never raised, and the rule counts as
not matching.

Modules: :mod:`~processors.rulebook.loading` (files to compiled rules),
:mod:`~processors.rulebook.model` (compiled rules, matches),
:mod:`~processors.rulebook.ruleset` (the loaded set and its entry points),
:mod:`~processors.rulebook.evaluation` and :mod:`~processors.rulebook.paths`
(contexts of only what expressions read), :mod:`~processors.rulebook.functions`.
"""

from __future__ import annotations

from processors.rulebook.loading import RuleFileError, parse_duration
from processors.rulebook.model import CompiledRule, Evaluation, Expression, Match
from processors.rulebook.ruleset import RuleSet, load_ruleset, try_reload

__all__ = [
    "CompiledRule",
    "Evaluation",
    "Expression",
    "Match",
    "RuleFileError",
    "RuleSet",
    "load_ruleset",
    "parse_duration",
    "try_reload",
]
