"""The spine every step writes through: atomic files and the folder lock (`atomic`), the shard
ledger and the one planner (`ledger`), the output contract (`contract`), run results
(`results`) and user errors (`errors`). Imports nothing else of recaption and no torch."""
