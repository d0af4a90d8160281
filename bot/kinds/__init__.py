"""The kinds of operation a request can ask for; each module registers its kinds with `@kind`.

To add one, write a module here (see docs/operations.md: "Adding a kind"), name it in `MODULES`,
and add its rows to the table in bot/policy.py.
"""

from __future__ import annotations

import importlib

MODULES = ("delete", "restore", "backend", "index", "forget_user")

for _module in MODULES:
    importlib.import_module(f"{__name__}.{_module}")
