"""Sample I/O below every step: a sample and its statuses (`sample`), image bytes to RGB
(`images`), the one tar writer (`tars`) and img2dataset-layout shards (`shards`)."""
