"""Settings that weaken a gate, found from each config field's `weakens` marker.

A safety setting (a threshold, a detector switch, an entity list) carries
`json_schema_extra={"weakens": RULE}`, where RULE says which way the setting is weaker than
the shipped default:

- ``higher``: a larger value lets more through (an allowance, a score a detection must reach);
- ``lower``: a smaller value lets more through (a floor, a sample size);
- ``false``: switching it off turns a detector or gate off;
- ``subset``: removing items from the shipped list (entities no longer detected);
- ``superset``: adding items to the shipped list (exemptions);
- ``changed``: any other value (a setting with no order, e.g. a replaced lexicon).

The effective config is compared with the shipped defaults (the config classes' own defaults,
not the YAML file a user may have edited), so one walk over the fields covers every gate,
including those added later, without a list of names to keep in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

RULES = {
    "higher": "higher lets more through",
    "lower": "lower lets more through",
    "false": "false turns a detector or gate off",
    "subset": "removed items are no longer checked",
    "superset": "added items are exempted",
    "changed": "another value than the shipped one",
}


@dataclass(frozen=True)
class Weakening:
    """One setting whose effective value is weaker than the shipped default."""

    setting: str
    rule: str
    shipped: Any
    value: Any

    def describe(self) -> str:
        """`pii.enabled = false (shipped true; false turns a detector or gate off)`, lists as the items that differ."""
        if self.rule == "subset":
            value = f"without {sorted(set(self.shipped) - set(self.value))}"
        elif self.rule == "superset":
            value = f"adds {sorted(set(self.value) - set(self.shipped))}"
        else:
            value = f"= {_show(self.value)} (shipped {_show(self.shipped)}"
            return f"{self.setting} {value}; {RULES[self.rule]})"
        return f"{self.setting} {value} ({RULES[self.rule]})"


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, str) else str(value)


def rule_of(model: type[BaseModel], name: str) -> str | None:
    """The `weakens` marker of one field, or None; an unknown marker is a programming error."""
    extra = model.model_fields[name].json_schema_extra
    rule = extra.get("weakens") if isinstance(extra, dict) else None
    if rule is not None and rule not in RULES:
        raise ValueError(f"{model.__name__}.{name}: weakens={rule!r} is not one of {', '.join(RULES)}")
    return rule  # type: ignore[return-value]


def marked_settings(model: type[BaseModel], prefix: str = "") -> dict[str, str]:
    """Every marked setting under a config class, as dotted path -> rule."""
    found: dict[str, str] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found |= marked_settings(annotation, f"{prefix}{name}.")
        elif rule := rule_of(model, name):
            found[f"{prefix}{name}"] = rule
    return found


def is_weaker(rule: str, value: Any, shipped: Any) -> bool:
    """Whether `value` is weaker than `shipped` under `rule`."""
    if rule == "higher":
        return value > shipped
    if rule == "lower":
        return value < shipped
    if rule == "false":
        return bool(shipped) and not value
    if rule == "subset":
        return bool(set(shipped) - set(value))
    if rule == "superset":
        return bool(set(value) - set(shipped))
    return value != shipped


def find_weakenings(effective: BaseModel, shipped: BaseModel, prefix: str = "") -> list[Weakening]:
    """Every marked setting of `effective` that is weaker than in `shipped` (same config class)."""
    found: list[Weakening] = []
    for name in type(effective).model_fields:
        value, default = getattr(effective, name), getattr(shipped, name)
        if isinstance(value, BaseModel):
            found += find_weakenings(value, default, f"{prefix}{name}.")
        elif (rule := rule_of(type(effective), name)) and is_weaker(rule, value, default):
            found.append(Weakening(f"{prefix}{name}", rule, default, value))
    return found


def flatten_acceptances(value: Any) -> Any:
    """`{pii: {enabled: {by, reason}}}` (what `--set gates.weakened_settings.pii.enabled.by=...` builds) and
    `{"pii.enabled": {by, reason}}` (YAML) both become `{"pii.enabled": {by, reason}}`."""
    if not isinstance(value, dict):
        return value
    flat: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, item in node.items():
            path = f"{prefix}{key}"
            if isinstance(item, dict) and item and not {"by", "reason"} & set(item):
                walk(item, f"{path}.")
            else:
                flat[path] = {**flat.get(path, {}), **item} if isinstance(item, dict) else item

    walk(value, "")
    return flat


class WeakenedSettingError(ValueError):
    """A setting is weaker than shipped and nobody accepted it on record (`gates.weakened_settings`)."""


def weakened_settings(cfg: Any) -> list[dict[str, Any]]:
    """Every weakened setting of a pipeline config, with who accepted it and why (`by` None: nobody did).

    `cfg` is a `PipelineConfig`; its class's defaults are the shipped ones.
    """
    accepted = cfg.gates.weakened_settings
    rows = []
    for w in find_weakenings(cfg, type(cfg)()):
        acceptance = accepted.get(w.setting)
        rows.append(
            {
                "setting": w.setting,
                "value": w.value,
                "shipped": w.shipped,
                "rule": w.rule,
                "description": w.describe(),
                "by": acceptance.by if acceptance else None,
                "reason": acceptance.reason if acceptance else None,
            }
        )
    return rows


def require_accepted(cfg: Any) -> list[dict[str, Any]]:
    """The weakened settings, all accepted on record.

    Raises:
        WeakenedSettingError: naming each weakened setting nobody accepted, and how to restore or accept it.
    """
    rows = weakened_settings(cfg)
    missing = [r for r in rows if r["by"] is None]
    if missing:
        first = missing[0]["setting"]
        raise WeakenedSettingError(
            "refusing to run: these settings weaken a gate and nobody accepted them on record: "
            + "; ".join(r["description"] for r in missing)
            + ". Restore the shipped value, or accept each one (the manifest and model card will list it), e.g. "
            f"--set gates.weakened_settings.{first}.by=you@org "
            f"--set 'gates.weakened_settings.{first}.reason=why this run may be weaker'"
        )
    return rows
