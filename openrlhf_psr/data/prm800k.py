"""Human-labelled step pairs from PRM800K (step-wise parquet in ../shared/data layout).

A *position* is a problem plus its previous steps; positions with at least one +1 and one -1 rated candidate next
step give one (chosen, rejected) pair: the first +1 and the first -1 in file order (deterministic). They seed EFT
(judge training), step-DPO benchmarks, and held-out judge accuracy (the phase-1 *test* file: never train on it).
"""

from __future__ import annotations

from pathlib import Path

from openrlhf_psr.errors import MissingField
from openrlhf_psr.records import JudgedStepPair


def _none(value):
    return None if value in (None, "None", "") else value


def human_step_pairs(path: str | Path) -> list[JudgedStepPair]:
    """The file's judged step pairs, steps numbered as a judge sees them (``Step n: ...``), PRM800K's reason for
    the rejected step as the rationale and ``<file>#<first row>`` as the source."""
    import pyarrow.parquet as pq

    from openrlhf_psr.steps import format_step

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PRM800K step file {path} does not exist")
    table = pq.read_table(path)
    required = {"instruction", "responses", "next_response", "rating"}
    missing = required - set(table.column_names)
    if missing:
        raise MissingField(f"{path}: missing columns {sorted(missing)} (has {table.column_names})")
    positions: dict[tuple, dict] = {}
    for row_number, row in enumerate(table.select(sorted(required | {"error_reason"} & set(table.column_names)))
                                     .to_pylist()):  # fmt: skip
        key = (row["instruction"], tuple(row["responses"] or ()))
        slot = positions.setdefault(key, {"row": row_number})
        rating = row["rating"]
        if rating is None:
            continue
        if rating > 0 and "chosen" not in slot:
            slot["chosen"] = row["next_response"]
        elif rating < 0 and "rejected" not in slot:
            slot["rejected"] = row["next_response"]
            slot["reason"] = _none(row.get("error_reason"))
    return [
        JudgedStepPair(
            q,
            tuple(format_step(n, step) for n, step in enumerate(prev, 1)),
            format_step(len(prev) + 1, s["chosen"]),
            format_step(len(prev) + 1, s["rejected"]),
            rationale=s.get("reason"),
            source=f"{path.name}#{s['row']}",
        )
        for (q, prev), s in positions.items()
        if "chosen" in s and "rejected" in s and s["chosen"].strip() != s["rejected"].strip()
    ]
