"""Caption quality: failure flags, CLIP scores, an LLM judge, and the report built on them."""
