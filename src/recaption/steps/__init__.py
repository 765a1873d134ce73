"""Steps over finished caption output that write a new folder: `recap filter` (`filter`) and
`recap export` (`export`), both through `quality.outputs.over_finished`."""
