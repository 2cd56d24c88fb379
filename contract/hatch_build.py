"""Packs ``../producers`` and ``../schemas`` into the contract's wheel, but not its editable one.

Hatchling's static ``force-include`` also copies the files into *editable* wheels,
where the copies in site-packages would shadow the checkout (edits to producers/
would not take effect). So the mapping (``packages`` in this hook's table in
pyproject.toml) is force-included by this hook for regular wheels only; an
editable install gets just the ``.pth`` of ``dev-mode-dirs``.
"""

from __future__ import annotations

from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class ContractPackages(BuildHookInterface):
    PLUGIN_NAME = "contract-packages"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version == "editable":
            return
        packages: dict[str, str] = self.config["packages"]
        build_data["force_include"].update(packages)
