"""`recap view`: a read-only web app over caption output (rows.py: DuckDB queries; images.py: thumbnails by
tar offset; app.py: the Starlette app; serve.py: uvicorn on loopback)."""
