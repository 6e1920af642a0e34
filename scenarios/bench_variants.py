"""``scenarios bench --variant``: named configuration variants a bench compares (pure).

A variant is either ``NAME:KEY=VALUE[,KEY=VALUE...]`` (``--set`` overrides, see
scenarios/overrides.py, applied to every run of the variant) or a preset:

* ``base``: the scenario as it is (its runs are the plain ``ALG-sSEED`` runs, so a bench
  that already ran them reuses them);
* ``prox:MU``: ``fedsa_lora.personalization.proximal_mu=MU``;
* ``ft:N``: ``fedsa_lora.personalization.finetune_steps=N``;
* ``sim[:FLOOR]``: ``round_policy.aggregation.weighting=similarity`` (and its floor);
* ``importance[:THRESHOLD]``: ``fedsa_lora.adaptive_split`` importance_based;
* ``layer_wise[:LAST]``: layer-wise split, layers 0..LAST (default 2) share A and B, the
  others keep the algorithm's split;
* ``adam:LR`` / ``yogi:LR`` / ``adagrad:LR`` / ``avgm[:LR]``: ``server_optimizer.name`` and
  ``server_lr=LR`` (avgm: momentum 0.9, LR default 1.0);
* ``headshare:K``: ``fedsa_lora.personalization.share_head_rounds=K`` (K a number or
  ``all``);
* ``bshare:K``: ``fedsa_lora.personalization.share_b_rounds=K`` (fedsa's B averaged in
  rounds 1..K);
* ``init:INIT``: ``model.lora.init=INIT`` (``a_random`` or ``b_random``: which LoRA matrix
  starts random);
* ``personal``: ``fedsa_lora.personalization.personal_head=true`` (a personal head beside
  the shared one);
* ``epochs:E``: ``training.local_epochs=E`` (local work in passes over the device's data);
* ``cosine:WARMUP``: ``training.lr_schedule=cosine`` after ``warmup_steps=WARMUP``.

Each variant becomes one run label (``ALGORITHM NAME``; ``base`` is just ``ALGORITHM``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import get_args

from fedsa_common.federation.config import ConfigError, LoraInit
from scenarios.overrides import parse_override

BASE = "base"


def _rounds(text: str) -> str:
    """A number of rounds, or ``all`` (every round)."""
    return text if text == "all" else str(int(text))


def _lora_init(text: str) -> str:
    """A value of ``model.lora.init``."""
    if text not in get_args(LoraInit):
        raise ValueError(text)
    return text


_SERVER_OPTIMIZERS = ("avgm", "adam", "yogi", "adagrad")  # avgm alone has a usable default LR
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,24}$")
# presets of one number: name -> (overrides, "{}" standing for it; its type; its meaning)
_LEVERS: dict[str, tuple[tuple[str, ...], type, str]] = {
    "headshare": (("fedsa_lora.personalization.share_head_rounds={}",), _rounds, "K"),
    "bshare": (("fedsa_lora.personalization.share_b_rounds={}",), _rounds, "K"),
    "init": (("model.lora.init={}",), _lora_init, "INIT"),
    "epochs": (("training.local_epochs={}",), float, "E"),
    "cosine": (("training.lr_schedule=cosine", "training.warmup_steps={}"), int, "WARMUP"),
}
# a comma that starts the next KEY=VALUE (values such as [lora_A, lora_B] keep theirs)
_NEXT_PAIR = re.compile(r",\s*(?=[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*\s*=)")


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...] = ()

    @property
    def plain(self) -> bool:
        """No overrides: the runs are the scenario's own (run keys as without variants)."""
        return not self.overrides


def _number(item: str, text: str, kind: type) -> str:
    try:
        kind(text)
    except ValueError:
        what = {int: "an integer", _rounds: "an integer or all",
                _lora_init: " or ".join(get_args(LoraInit))}.get(kind, "a number")
        raise ValueError(f"--variant {item!r}: {text!r} is not {what}") from None
    return text


def _preset(item: str) -> Variant:
    head, _, arg = item.partition(":")
    if head == BASE and not arg:
        return Variant(BASE)
    if head == "prox" and arg:
        mu = _number(item, arg, float)
        return Variant(f"prox-{mu}", (f"fedsa_lora.personalization.proximal_mu={mu}",))
    if head == "ft" and arg:
        steps = _number(item, arg, int)
        return Variant(f"ft-{steps}", (f"fedsa_lora.personalization.finetune_steps={steps}",))
    if head == "personal" and not arg:
        return Variant("personal", ("fedsa_lora.personalization.personal_head=true",))
    if head == "sim":
        out = ["round_policy.aggregation.weighting=similarity"]
        if arg:
            out.append(f"round_policy.aggregation.similarity_floor={_number(item, arg, float)}")
        return Variant(f"sim-{arg}" if arg else "sim", tuple(out))
    if head == "importance":
        section = "{enable: true, strategy: importance_based"
        section += f", threshold: {_number(item, arg, float)}}}" if arg else "}"
        return Variant(f"importance-{arg}" if arg else "importance",
                       (f"fedsa_lora.adaptive_split={section}",))
    if head == "layer_wise":
        last = _number(item, arg, int) if arg else "2"
        rules = f"[{{layers: '0-{last}', share: [lora_A, lora_B]}}]"
        return Variant(f"layer_wise-{last}", (
            f"fedsa_lora.adaptive_split={{enable: true, strategy: layer_wise, "
            f"layers: {rules}}}",))
    if head in _SERVER_OPTIMIZERS and (arg or head == "avgm"):
        lr = [f"server_lr={_number(item, arg, float)}"] if arg else []
        return Variant(f"{head}-{arg}" if arg else head, (f"server_optimizer.name={head}", *lr))
    if head in _LEVERS and arg:
        keys, kind, _ = _LEVERS[head]
        value = _number(item, arg, kind)
        return Variant(f"{head}-{value}", tuple(k.format(value) for k in keys))
    levers = ", ".join(f"{k}:{v[2]}" for k, v in _LEVERS.items())
    raise ValueError(f"--variant {item!r}: not NAME:KEY=VALUE[,KEY=VALUE] nor a preset "
                     "(base, prox:MU, ft:N, sim[:FLOOR], importance[:THRESHOLD], "
                     f"layer_wise[:LAST], adam:LR, yogi:LR, adagrad:LR, avgm[:LR], {levers})")


def parse_variant(item: str) -> Variant:
    """One ``--variant`` -> Variant; a ValueError names the item and what is wrong."""
    item = item.strip()
    name, sep, rest = item.partition(":")
    if not (sep and "=" in rest):
        return _preset(item)
    if not _NAME.match(name) or name == BASE:
        raise ValueError(f"--variant {item!r}: NAME must match {_NAME.pattern} and not be "
                         f"{BASE!r}")
    pairs = tuple(p.strip() for p in _NEXT_PAIR.split(rest) if p.strip())
    for pair in pairs:
        try:
            parse_override(pair)
        except ConfigError as err:
            raise ValueError(f"--variant {item!r}: {err}") from None
    return Variant(name, pairs)


def parse_variants(items: list[str]) -> list[Variant]:
    """Every ``--variant``; an empty list or a repeated name is a ValueError."""
    variants = [parse_variant(i) for i in items if i.strip()]
    if not variants:
        raise ValueError("--variant: no variant given")
    names = [v.name for v in variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"--variant: {', '.join(dupes)} given more than once")
    return variants


def describe(variant: Variant) -> str:
    """``name = override; override`` for bench.md."""
    return f"{variant.name}: " + ("the scenario as it is" if variant.plain
                                  else "; ".join(f"`{o}`" for o in variant.overrides))
