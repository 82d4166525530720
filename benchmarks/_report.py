"""Where a benchmark's figures go: ``NAME.json`` (meta and rows) and ``NAME.md`` (the table), also printed."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(out_dir, name: str, meta: dict, rows: list[dict], table: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (out / f"{name}.md").write_text(table)
    print(table)
