"""The caption step: shards streamed as batches through loader workers (`batching`), captioned
pass by pass on an engine and planned against the ledger (`pipeline`), one row per sample
(`rows`), streamed into the shard's parquet (`writer`)."""
