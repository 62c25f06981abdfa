"""Mirrors modules/extra_networks.py (A1111 1.10): ``parse_prompt`` removes ``<name:args>`` items and returns
them grouped by network name, each as ``ExtraNetworkParams(items=args.split(":"))``."""

from __future__ import annotations

import re
from collections import defaultdict

re_extra_net = re.compile(r"<(\w+):([^>]+)>")


class ExtraNetworkParams:
    def __init__(self, items=None):
        self.items = items or []
        self.positional = [x for x in self.items if "=" not in x]
        self.named = dict(x.split("=", 1) for x in self.items if "=" in x)


def parse_prompt(prompt: str):
    found = defaultdict(list)

    def take(match):
        found[match.group(1)].append(ExtraNetworkParams(items=match.group(2).split(":")))
        return ""

    return re.sub(re_extra_net, take, prompt), found
