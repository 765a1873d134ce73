"""The spine every step writes through: atomic files and the folder lock (`atomic`), the shard
ledger and the one planner (`ledger`), the output contract (`contract`), run results
(`results`) and user errors (`errors`). Imports nothing else of recaption and no torch."""

__version__ = "0.1.0"  # recorded in every marker and checkpoint; pyproject.toml says the same
